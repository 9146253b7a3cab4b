"""The bench engine protocol: how to run a batch of requests and what raw timings come back.

An engine loads the model once, runs batches of token-id prompts, and returns per-request raw
timestamps; it computes no metric (that is `pipelines.bench.measure`'s job). Engines are listed
in `pipelines.registry.BENCH_ENGINES`. Exercised by `pytest tests/test_bench.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class RequestTiming:
    """Raw clock readings (time.perf_counter seconds) of one request."""

    submit_s: float
    # One reading per generated token, in generation order.
    token_times_s: list[float]


class Engine(Protocol):
    name: str
    # What `peak_memory` measures, e.g. "cuda_max_allocated" or "process_rss_peak_sampled".
    memory_kind: str

    def run_batch(self, prompts: list[list[int]], output_tokens: int) -> list[RequestTiming]:
        """Serve `prompts` as one batch, generating exactly `output_tokens` tokens for each."""

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window."""

    def peak_memory(self) -> int:
        """Peak bytes since the last `reset_peak_memory`."""

    def device_name(self) -> str:
        """The accelerator or CPU model the engine runs on."""
