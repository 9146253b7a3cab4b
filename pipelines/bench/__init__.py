"""Benchmark stage: Variant -> BenchResult (speed, latency percentiles, peak memory, the knee).

Three concerns kept apart: `scenarios` says what to run, `engines/` how to run it, `measure`
computes every metric. In-process engines (`hf`) run the batches `scenarios` plans; level engines
(`openai`: GuideLLM against a `ServedModel`'s endpoint) run whole load levels and leave their
HTML/JSON reports next to the result. Results are cached under `<cache_dir>/bench/<variant>-<key>`,
keyed by the checkpoint hash, the bench config, the hardware, the engine, the library versions
and, when served, the serving engine, its version and args (`overwrite=true` redoes them). Run by
`python -m pipelines.run`; reproduced for the embedded model by `python benchmarks/bench_variants.py`
and `python benchmarks/bench_served.py`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path

from tqdm.auto import tqdm

from pipelines.bench.conditions import conditions, snapshot, warn_if_noisy
from pipelines.bench.measure import knee_level, summarize_level, summarize_served_level
from pipelines.bench.scenarios import LevelPlan, ordinary_token_ids, plan_levels
from pipelines.config import BenchConfig, RunConfig
from pipelines.errors import ConfigError
from pipelines.models import load_tokenizer
from pipelines.records import (BenchConditions, BenchResult, LoadLevel, ServedModel, Variant, load_record,
                               save_record)
from pipelines.registry import BENCH_ENGINES, resolve
from pipelines.serve import engine_identity
from pipelines.storage import atomic_directory, cache_entry, library_versions, stable_hash, write_manifest

log = logging.getLogger(__name__)

RESULT_FILE = "bench.json"


def run_benchmark(cfg: RunConfig, variant: Variant, served: ServedModel | None = None) -> BenchResult:
    """Benchmark `variant`: in process (engine hf), or through `served`'s endpoint (engine openai)."""
    bench = cfg.bench
    engine_class = resolve(BENCH_ENGINES, "bench engine", bench.engine)  # checked by preflight (check_bench)
    if engine_class.runs_levels and served is None:
        raise ConfigError(f"bench.engine={bench.engine} needs a served endpoint for {variant.name}; "
                          "run it with serve=vllm or serve=endpoint")
    versions = library_versions(*engine_class.libraries)
    out_dir = Path(cfg.cache_dir) / "bench" / f"{variant.name}-{bench_key(cfg, variant, versions, served)}"
    # Verified before reuse (storage.cache_entry); concurrent jobs benchmark one variant once.
    with cache_entry(out_dir, cfg.overwrite) as manifest:
        if manifest is not None:
            log.info("reusing cached benchmark of %s at %s", variant.name, out_dir)
            return dataclasses.replace(load_record(BenchResult, out_dir / RESULT_FILE), from_cache=True)
        if engine_class.runs_levels:
            result = _run_served(engine_class, cfg, variant, served, versions, out_dir)
        else:
            result = _run_in_process(engine_class, cfg, variant, versions)
            store(result, out_dir, cfg, variant)
    log.info("benchmark of %s: knee %s; written to %s", variant.name,
             result.knee_load or result.knee_batch_size, out_dir)
    return result


def check_bench(cfg: RunConfig):
    """Preflight: the engine takes bench.params and accepts the config (bounds are the schema's)."""
    engine_class = resolve(BENCH_ENGINES, "bench engine", cfg.bench.engine)
    _check_engine_params(engine_class, cfg.bench)
    engine_class.check(cfg)


def bench_key(cfg: RunConfig, variant: Variant, versions: dict[str, str], served: ServedModel | None = None) -> str:
    settings = {k: v for k, v in dataclasses.asdict(cfg.bench).items() if k not in {"name", "enabled"}}
    key = {"variant": variant.content_hash, "bench": settings, "hardware": cfg.hardware.name,
           "device": cfg.hardware.device, "dtype": cfg.model.dtype, "versions": versions}
    if served is not None:
        # What serves it, not where: the URL and served name change from one server start to the next.
        key["server"] = engine_identity(served)
    return stable_hash(key)


def _run_in_process(engine_class, cfg: RunConfig, variant: Variant, versions: dict[str, str]) -> BenchResult:
    bench = cfg.bench
    engine = engine_class(Path(variant.checkpoint_dir), cfg.model, cfg.hardware.device,
                          **bench.params)
    plans = plan_prompts(cfg, variant)
    before = snapshot()
    levels = _measure_levels(engine, plans, bench, variant.name)
    return in_process_result(cfg, variant, engine, levels, versions, conditions(before, snapshot(), levels))


def plan_prompts(cfg: RunConfig, variant: Variant) -> list[LevelPlan]:
    tokenizer = load_tokenizer(Path(variant.checkpoint_dir), cfg.model.trust_remote_code)
    return plan_levels(cfg.bench, ordinary_token_ids(tokenizer))


def in_process_result(cfg: RunConfig, variant: Variant, engine, levels: list[LoadLevel], versions: dict[str, str],
                      found: BenchConditions, memory_kind: str | None = None) -> BenchResult:
    warn_if_noisy(variant.name, found)
    knee = knee_level(levels)
    return BenchResult(
        variant=variant.name, engine=cfg.bench.engine, device=cfg.hardware.device, levels=levels,
        knee_batch_size=knee.batch_size if knee else None,
        peak_memory_bytes=max(level.peak_memory_bytes for level in levels),
        memory_kind=memory_kind or engine.memory_kind,
        checkpoint_bytes=variant.size_bytes, versions={**versions, "device_name": engine.device_name()},
        conditions=found)


def _run_served(engine_class, cfg: RunConfig, variant: Variant, served: ServedModel, versions: dict[str, str],
                out_dir: Path) -> BenchResult:
    engine = engine_class(served, cfg, **cfg.bench.params)
    with atomic_directory(out_dir) as scratch:
        before = snapshot()
        run = engine.run_levels(scratch)
        levels = [summarize_served_level(level, cfg.bench.slo) for level in run.levels]
        result = served_result(cfg, variant, served, engine, levels, versions, conditions(before, snapshot(), levels),
                               [str(out_dir / path.relative_to(scratch)) for path in run.reports])
        _write_result(result, scratch, cfg, variant)
    return result


def served_result(cfg: RunConfig, variant: Variant, served: ServedModel, engine, levels: list[LoadLevel],
                  versions: dict[str, str], found: BenchConditions, reports: list[str]) -> BenchResult:
    """The BenchResult of levels timed through `served`'s endpoint by a level engine."""
    warn_if_noisy(variant.name, found)
    knee = knee_level(levels)
    return BenchResult(
        variant=variant.name, engine=cfg.bench.engine, device=cfg.hardware.device, levels=levels,
        knee_batch_size=knee.batch_size if knee else None, knee_load=knee.load if knee else None,
        peak_memory_bytes=None, memory_kind=engine.memory_kind, checkpoint_bytes=variant.size_bytes,
        versions={**versions, served.engine: served.engine_version, "device_name": engine.device_name()},
        server=engine_identity(served), reports=reports, conditions=found)


def times_endpoint(cfg: RunConfig) -> bool:
    """True when bench.engine drives a served endpoint (a level engine) rather than a model in process."""
    return bool(resolve(BENCH_ENGINES, "bench engine", cfg.bench.engine).runs_levels)


def _check_engine_params(engine_class, bench: BenchConfig) -> None:
    """bench.params pass through to the engine untouched; a name it does not take is a config error."""
    accepted = set(inspect.signature(engine_class).parameters) - {"checkpoint_dir", "model", "device", "served", "cfg"}
    unknown = sorted(set(bench.params) - accepted)
    if unknown:
        raise ConfigError(f"bench.params {unknown} are not options of the {bench.engine} engine; "
                          f"it takes {sorted(accepted) or 'none'}")


def _measure_levels(engine, plans: list[LevelPlan], bench: BenchConfig, variant: str) -> list[LoadLevel]:
    levels = []
    with tqdm(total=len(plans) * bench.repeats, desc=f"bench {variant}", unit="repeat") as bar:
        for plan in plans:
            bar.set_postfix(batch_size=plan.batch_size)
            levels.append(_measure_level(engine, plan, bench, bar))
    return levels


def _measure_level(engine, plan: LevelPlan, bench: BenchConfig, bar) -> LoadLevel:
    engine.reset_peak_memory()
    for batch in plan.warmup_batches:
        engine.run_batch(batch, bench.output_tokens)
    repeats = []
    for batches in plan.repeats:
        repeats.append([t for batch in batches for t in engine.run_batch(batch, bench.output_tokens)])
        bar.update()
    return summarize_level(plan.batch_size, repeats, bench.slo, engine.peak_memory())


def store(result: BenchResult, out_dir: Path, cfg: RunConfig, variant: Variant) -> None:
    with atomic_directory(out_dir) as scratch:
        _write_result(result, scratch, cfg, variant)


def _write_result(result: BenchResult, directory: Path, cfg: RunConfig, variant: Variant) -> None:
    save_record(result, directory / RESULT_FILE)
    # The manifest is written last: a directory without one is never taken as a finished result.
    write_manifest(directory, {"variant": variant.name, "variant_hash": variant.content_hash,
                               "bench": dataclasses.asdict(cfg.bench), "hardware": cfg.hardware.name,
                               "server": result.server, "versions": result.versions})
