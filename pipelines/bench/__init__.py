"""Benchmark stage: Variant -> BenchResult (speed, latency percentiles, peak memory, the knee).

Three concerns kept apart: `scenarios` says what to run, `engines/` how to run it, `measure`
computes every metric. Results are cached under `<cache_dir>/bench/<variant>-<key>`, keyed by the
checkpoint hash, the bench config, the hardware, the engine and the library versions
(`overwrite=true` redoes them). Run by `python -m pipelines.run`; reproduced for the embedded model
by `python benchmarks/bench_variants.py`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path

from tqdm.auto import tqdm

from pipelines.bench.measure import knee_batch_size, summarize_level
from pipelines.bench.scenarios import LevelPlan, ordinary_token_ids, plan_levels
from pipelines.config import BenchConfig, RunConfig
from pipelines.errors import ConfigError
from pipelines.models import load_tokenizer
from pipelines.records import BenchResult, LoadLevel, Variant, load_record, save_record
from pipelines.registry import BENCH_ENGINES, resolve
from pipelines.storage import atomic_directory, library_versions, read_manifest, stable_hash, write_manifest

log = logging.getLogger(__name__)

RESULT_FILE = "bench.json"
LIBRARIES = ("torch", "transformers", "compressed-tensors")


def run_benchmark(cfg: RunConfig, variant: Variant) -> BenchResult:
    bench = cfg.bench
    if bench.output_tokens < 2:
        raise ConfigError(f"bench.output_tokens={bench.output_tokens} gives no inter-token latency; use >= 2")
    engine_class = resolve(BENCH_ENGINES, "bench engine", bench.engine)
    versions = library_versions(*LIBRARIES)
    out_dir = Path(cfg.cache_dir) / "bench" / f"{variant.name}-{bench_key(cfg, variant, versions)}"
    if read_manifest(out_dir) and not cfg.overwrite:
        log.info("reusing cached benchmark of %s at %s", variant.name, out_dir)
        return dataclasses.replace(load_record(BenchResult, out_dir / RESULT_FILE), from_cache=True)
    engine = engine_class(Path(variant.checkpoint_dir), cfg.model, cfg.hardware.device,
                          **_engine_params(engine_class, bench))
    tokenizer = load_tokenizer(Path(variant.checkpoint_dir), cfg.model.trust_remote_code)
    plans = plan_levels(bench, ordinary_token_ids(tokenizer))
    levels = _measure_levels(engine, plans, bench, variant.name)
    result = BenchResult(
        variant=variant.name, engine=bench.engine, device=cfg.hardware.device, levels=levels,
        knee_batch_size=knee_batch_size(levels),
        peak_memory_bytes=max(level.peak_memory_bytes for level in levels), memory_kind=engine.memory_kind,
        checkpoint_bytes=variant.size_bytes, versions={**versions, "device_name": engine.device_name()})
    _store(result, out_dir, cfg, variant)
    log.info("benchmark of %s: knee batch size %s; written to %s", variant.name, result.knee_batch_size, out_dir)
    return result


def bench_key(cfg: RunConfig, variant: Variant, versions: dict[str, str]) -> str:
    settings = {k: v for k, v in dataclasses.asdict(cfg.bench).items() if k not in {"name", "enabled"}}
    return stable_hash({"variant": variant.content_hash, "bench": settings, "hardware": cfg.hardware.name,
                        "device": cfg.hardware.device, "dtype": cfg.model.dtype, "versions": versions})


def _engine_params(engine_class, bench: BenchConfig) -> dict:
    """bench.params pass through to the engine untouched; a name it does not take is a config error."""
    accepted = set(inspect.signature(engine_class).parameters) - {"checkpoint_dir", "model", "device"}
    unknown = sorted(set(bench.params) - accepted)
    if unknown:
        raise ConfigError(f"bench.params {unknown} are not options of the {bench.engine} engine; "
                          f"it takes {sorted(accepted) or 'none'}")
    return dict(bench.params)


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


def _store(result: BenchResult, out_dir: Path, cfg: RunConfig, variant: Variant) -> None:
    with atomic_directory(out_dir) as scratch:
        save_record(result, scratch / RESULT_FILE)
        # The manifest is written last: a directory without one is never taken as a finished result.
        write_manifest(scratch, {"variant": variant.name, "variant_hash": variant.content_hash,
                                 "bench": dataclasses.asdict(cfg.bench), "hardware": cfg.hardware.name,
                                 "versions": result.versions})
