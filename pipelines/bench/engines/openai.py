"""GuideLLM against an OpenAI-compatible endpoint (vLLM, or any served URL) as a bench engine.

GuideLLM schedules the requests (synchronous, concurrent streams, constant or Poisson rates, a
sweep, the knee search), streams them with exact output lengths (`max_tokens` + `ignore_eos`)
and writes its JSON and self-contained HTML reports. This module only maps
`bench` config onto a GuideLLM scenario and its per-request records onto `StreamTiming`s; every
metric is computed by `pipelines.bench.measure`.

    python -m pipelines.run serve=vllm bench=served quant=fp8
Exercised by `pytest tests/test_bench_served.py`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.bench.engines import LevelRun, MeasuredLevel, StreamTiming
from pipelines.errors import ConfigError
from pipelines.records import ServedModel
from pipelines.serve import is_served

log = logging.getLogger(__name__)

# The served endpoint's API key, handed to the GuideLLM child process in its environment.
API_KEY_VARIABLE = "QUANTGATE_SERVED_API_KEY"
PROFILES = ("synchronous", "concurrent", "constant", "poisson", "sweep", "knee")
# GuideLLM's knee search needs at least five increasing concurrency points.
KNEE_MIN_POINTS = 5


class GuideLLMEngine:
    name = "openai"
    libraries = ("guidellm",)
    runs_levels = True
    memory_kind = "not_measured_server_process"

    def __init__(self, served: ServedModel, cfg, profile: str = "concurrent", rates: list[float] | None = None,
                 sweep_size: int = 5, max_worker_processes: int = 2, request_timeout_s: float | None = None):
        # cfg is a RunConfig: bench says what to run; `served` where, and the key it needs.
        self.served = served
        self.bench = cfg.bench
        self.profile, self.rates, self.sweep_size = profile, list(rates or []), sweep_size
        self.max_worker_processes = max_worker_processes
        self.request_timeout_s = request_timeout_s

    @classmethod
    def check(cls, cfg) -> None:
        bench, params = cfg.bench, dict(cfg.bench.params)
        if not is_served(cfg):
            raise ConfigError("bench.engine=openai benchmarks a served endpoint; add serve=vllm or serve=endpoint "
                              "(or use bench=cpu for the in-process engine)")
        if importlib.util.find_spec("guidellm") is None:
            raise ConfigError("bench.engine=openai runs GuideLLM, which is not installed: "
                              "pip install -c constraints.txt -e '.[serve]'")
        profile = params.get("profile", "concurrent")
        if profile not in PROFILES:
            raise ConfigError(f"bench.params.profile={profile} must be one of {', '.join(PROFILES)}")
        if profile in ("constant", "poisson") and not params.get("rates"):
            raise ConfigError(f"bench.params.profile={profile} needs bench.params.rates, e.g. [1, 2, 4] (requests/s)")
        if profile in ("constant", "poisson") and min(params["rates"]) <= 0:
            raise ConfigError(f"bench.params.rates={list(params['rates'])} must all be > 0 requests/s")
        if profile == "knee" and (len(set(bench.batch_sizes)) < KNEE_MIN_POINTS
                                  or list(bench.batch_sizes) != sorted(set(bench.batch_sizes))):
            raise ConfigError(f"bench.params.profile=knee needs bench.batch_sizes of >= {KNEE_MIN_POINTS} distinct "
                              f"increasing concurrency points; got {list(bench.batch_sizes)}")
        if profile in ("sweep", "knee") and bench.repeats != 1:
            raise ConfigError(f"bench.params.profile={profile} chooses its own load levels, which differ between "
                              f"runs; set bench.repeats=1 (got {bench.repeats})")
        if int(params.get("max_worker_processes", 2)) < 1:
            raise ConfigError("bench.params.max_worker_processes must be >= 1")

    def run_levels(self, out_dir: Path) -> LevelRun:
        """Every level, `bench.repeats` GuideLLM runs in a row; their rounds merged per level."""
        rounds = [self.run_round(out_dir, repeat) for repeat in range(self.bench.repeats)]
        return combine_rounds(rounds, self.bench.requests_per_level * self.bench.repeats)

    def run_round(self, out_dir: Path, repeat: int) -> LevelRun:
        """One GuideLLM run of every level (round `repeat`): one repeat per level, its reports under `out_dir`."""
        from guidellm.benchmark import GenerativeBenchmarksReport

        paths = {kind: out_dir / f"guidellm-r{repeat}.{kind}" for kind in ("json", "html")}
        log.info("GuideLLM %s run %d/%d against %s", self.profile, repeat + 1, self.bench.repeats,
                 self.served.base_url)
        # A fresh interpreter: GuideLLM pickles the loguru logger into its workers, and a sink
        # another library added here (llm-compressor's, after quantizing) cannot be pickled.
        scenario = out_dir / f"guidellm-r{repeat}-scenario.json"
        scenario.write_text(json.dumps(self.scenario(paths)))
        # The key travels in the child's environment, never in its arguments or the scenario file.
        key = {API_KEY_VARIABLE: self.served.api_key} if self.served.api_key else {}
        subprocess.run([sys.executable, "-m", __name__, str(scenario), str(self.max_worker_processes)], check=True,
                       env={**os.environ, **key})
        benchmarks = GenerativeBenchmarksReport.load_file(paths["json"]).benchmarks
        return LevelRun(levels=[measured_level(b, self.bench.warmup_requests) for b in benchmarks],
                        reports=[paths["html"], paths["json"]])

    def device_name(self) -> str:
        return f"{self.served.engine} {self.served.engine_version} serving {self.served.model}"

    def scenario(self, paths: dict[str, Path]) -> dict[str, Any]:
        """The GuideLLM scenario (its own schema) for one run of every load level."""
        bench = self.bench
        profile, levels = self._profile()
        spec = {
            "backend": self._backend(),
            "profile": profile,
            "constraints": [{"kind": "max_requests", "count": bench.requests_per_level + bench.warmup_requests}],
            "tokenizer": {"kind": "huggingface_auto", "model": self.served.tokenizer_dir},
            "data": [{"kind": "synthetic_text", "prompt_tokens": bench.input_tokens,
                      "output_tokens": bench.output_tokens}],
            "seed": {"kind": "static", "value": bench.seed},
            "outputs": [{"kind": kind, "path": str(path)} for kind, path in paths.items()],
        }
        return {"spec": spec, "benchmarks": levels or [None]}

    def _profile(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The profile, and one override per level where the levels come from config."""
        streams = [int(size) for size in self.bench.batch_sizes]
        if self.profile == "concurrent":
            return {"kind": "concurrent"}, [{"profile.streams": s} for s in streams]
        if self.profile in ("constant", "poisson"):
            return {"kind": self.profile}, [{"profile.rate": float(r)} for r in self.rates]
        if self.profile == "sweep":
            return {"kind": "sweep", "sweep_size": self.sweep_size}, []
        if self.profile == "knee":
            return {"kind": "knee", "initial_streams": streams}, []
        return {"kind": "synchronous"}, []

    def _backend(self) -> dict[str, Any]:
        base_url = self.served.base_url.rstrip("/")
        backend = {"kind": "openai_http", "target": base_url.removesuffix("/v1"), "model": self.served.model,
                   "request_format": "/v1/completions", "timeout": self.request_timeout_s}
        return {key: value for key, value in backend.items() if value is not None}


def run_guidellm(scenario_path: str, max_worker_processes: int) -> None:
    """One GuideLLM run of every level (in its own interpreter); its JSON and HTML reports are the output."""
    from guidellm.benchmark import benchmark_generative_text
    from guidellm.schemas.benchmark import BenchmarkScenario
    from guidellm.settings import settings

    # GuideLLM spawns worker processes; on a small machine their start-up dominates short runs.
    settings.max_worker_processes = max_worker_processes
    spec = json.loads(Path(scenario_path).read_text())
    if os.environ.get(API_KEY_VARIABLE):  # read here, so the key is never written to disk
        spec["spec"]["backend"]["api_key"] = os.environ[API_KEY_VARIABLE]
    scenario = BenchmarkScenario.model_validate(spec)
    asyncio.run(benchmark_generative_text(scenario, progress=False))


def measured_level(benchmark, warmup_requests: int) -> MeasuredLevel:
    """One GuideLLM benchmark (a load level) as raw per-request timings, warm-up requests dropped.

    The warm-up is the first `warmup_requests` requests the level started (successful or not).
    GuideLLM's own warm-up (0.8.1) opens its window at the start of the request whose completion
    is the (k+1)-th, so how many it drops varies with concurrency; this keeps the count exact.
    Its reports therefore include the warm-up requests."""
    strategy = benchmark.config.strategy
    kind = strategy.type_
    streams = {"synchronous": 1, "concurrent": getattr(strategy, "streams", None)}.get(kind)
    rate = getattr(strategy, "rate", None) if kind in ("constant", "poisson") else None
    if kind == "throughput":
        load = "max"
    elif rate is not None:
        load = f"r{rate:.3g}"
    else:
        load = "sync" if kind == "synchronous" else f"c{streams}"
    requests = sorted([(status, stats) for status in ("successful", "errored", "incomplete")
                       for stats in getattr(benchmark.requests, status) or []], key=lambda item: _started(item[1]))
    measured = requests[warmup_requests:]
    errored = [stats for status, stats in measured if status == "errored"]
    return MeasuredLevel(
        load=load, streams=streams, rate_rps=rate,
        repeats=[[stream_timing(stats) for status, stats in measured if status == "successful"]],
        errored=len(errored), incomplete=sum(status == "incomplete" for status, _ in measured),
        first_error=next((str(stats.info.error).splitlines()[0] for stats in errored if stats.info.error), None))


def combine_rounds(rounds: list[LevelRun], requested: int) -> LevelRun:
    """The rounds of one endpoint as one LevelRun: per level (by load) its repeats in round order and the
    summed error counts; a level GuideLLM kept fewer than `requested` requests of is logged."""
    levels: dict[str, MeasuredLevel] = {}
    for measured in (level for run in rounds for level in run.levels):
        kept = levels.setdefault(measured.load, MeasuredLevel(measured.load, measured.streams, measured.rate_rps,
                                                              repeats=[]))
        kept.repeats += measured.repeats
        kept.errored += measured.errored
        kept.incomplete += measured.incomplete
        kept.first_error = kept.first_error or measured.first_error
    reports = [path for run in rounds for path in run.reports]
    for load, count, asked in short_levels(list(levels.values()), requested):
        log.warning("GuideLLM measured %d of the %d requests asked at %s (the rest were never started); "
                    "its numbers rest on fewer samples: see %s", count, asked, load, reports[-1])
    return LevelRun(levels=list(levels.values()), reports=reports)


def short_levels(levels: list[MeasuredLevel], asked: int) -> list[tuple[str, int, int]]:
    """(load, measured, asked) for each level where GuideLLM kept fewer requests than asked."""
    measured = {level.load: sum(map(len, level.repeats)) + level.errored + level.incomplete for level in levels}
    return [(load, count, asked) for load, count in measured.items() if count < asked]


def _started(stats) -> float:
    timings = stats.info.timings
    return next((t for t in (timings.request_start, timings.resolve_start, timings.queued) if t is not None), 0.0)


def stream_timing(stats) -> StreamTiming:
    timings = stats.info.timings
    return StreamTiming(submit_s=timings.request_start, first_token_s=timings.first_token_iteration,
                        last_token_s=timings.last_token_iteration,
                        end_s=timings.request_end if timings.request_end is not None else timings.resolve_end,
                        output_tokens=int(stats.output_tokens or 0), chunks=int(timings.token_iterations))


if __name__ == "__main__":  # GuideLLM's spawned workers import this module again: run only here
    run_guidellm(sys.argv[1], int(sys.argv[2]))
