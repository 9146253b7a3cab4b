"""The bench engine protocols: how requests are run and what raw timings come back.

Two shapes, both computing no metric (that is `pipelines.bench.measure`'s job):
- `Engine` (in-process, e.g. `hf`): loads the model once and serves one static batch of token-id
  prompts at a time; the stage plans the batches (`scenarios`) and returns per-token timestamps.
- `LevelEngine` (served, e.g. `openai`): drives a whole run of load levels itself against an
  endpoint (its library schedules the requests, rates and streaming) and returns, per level and
  repeat, the per-request timings of what it measured, plus the reports it wrote; `run_round`
  runs one repeat of every level, so a paired run can alternate two endpoints round by round.
Both declare `check(cfg)` (cheap validation, run by preflight before any work), `libraries`
(whose versions belong in the cache key) and their constructor (whose extra keyword arguments are
`bench.params`, checked against its signature). Adding an engine is one module, one
conf/bench/<name>.yaml naming it in `engine:` and one line in `pipelines.registry.BENCH_ENGINES`
(the served-endpoint engine `openai` was added that way; tests/test_seams.py registers a test double).
Exercised by `pytest tests/test_bench.py tests/test_bench_served.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol


@dataclass
class RequestTiming:
    """Raw clock readings (time.perf_counter seconds) of one request."""

    submit_s: float
    # One reading per generated token, in generation order.
    token_times_s: list[float]


@dataclass
class StreamTiming:
    """Raw clock readings (seconds) of one streamed request to an endpoint."""

    submit_s: float
    first_token_s: float
    last_token_s: float
    # When the response ended (after the last chunk: usage, [DONE]).
    end_s: float
    output_tokens: int
    # Streamed chunks that carried output; a server may send several tokens in one chunk.
    chunks: int


@dataclass
class MeasuredLevel:
    """One load level as a level engine ran it: per repeat, the timings of its successful requests."""

    # "c4" (4 concurrent streams), "r2.5" (2.5 requests/s), "sync" (one at a time), "max" (all at once).
    load: str
    # Concurrent streams the level was held at; None for rate-driven levels.
    streams: int | None
    rate_rps: float | None
    repeats: list[list[StreamTiming]]
    errored: int = 0
    incomplete: int = 0
    # One errored request's message, so an all-errored level fails with the server's reason.
    first_error: str | None = None


@dataclass
class LevelRun:
    levels: list[MeasuredLevel]
    reports: list[Path] = field(default_factory=list)


class Engine(Protocol):
    name: str
    libraries: ClassVar[tuple[str, ...]]
    # What `peak_memory` measures, e.g. "cuda_max_allocated" or "process_rss_peak_sampled".
    memory_kind: str
    # False: the stage plans the batches and calls run_batch (True is the LevelEngine shape).
    runs_levels: ClassVar[bool]

    def __init__(self, checkpoint_dir: Path, model, device: str, **params) -> None:
        """Load the checkpoint (`model` is the ModelConfig) on `device`; `params` are bench.params."""

    @classmethod
    def check(cls, cfg) -> None:
        """Raise a ConfigError for a config this engine cannot run (no model loaded, no network)."""

    def run_batch(self, prompts: list[list[int]], output_tokens: int) -> list[RequestTiming]:
        """Serve `prompts` as one batch, generating exactly `output_tokens` tokens for each."""

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window."""

    def peak_memory(self) -> int:
        """Peak bytes since the last `reset_peak_memory`."""

    def device_name(self) -> str:
        """The accelerator or CPU model the engine runs on."""


class LevelEngine(Protocol):
    name: str
    libraries: ClassVar[tuple[str, ...]]
    memory_kind: str
    # Marks the shape for run_benchmark: the engine takes a ServedModel and runs whole levels.
    runs_levels: ClassVar[bool]

    def __init__(self, served, cfg, **params) -> None:
        """Target `served` (a ServedModel) with the RunConfig's bench settings; `params` are bench.params."""

    @classmethod
    def check(cls, cfg) -> None:
        """Raise a ConfigError for a config this engine cannot run (no endpoint contacted)."""

    def run_levels(self, out_dir: Path) -> LevelRun:
        """Run every load level of the config against the endpoint; write reports under `out_dir`."""

    def run_round(self, out_dir: Path, repeat: int) -> LevelRun:
        """One round: every load level once (repeat number `repeat`); a paired run alternates two
        endpoints' rounds (pipelines/bench/paired.py)."""

    def device_name(self) -> str:
        """What served the requests (engine, version, endpoint model)."""
