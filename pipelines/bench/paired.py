"""Paired benchmarking: base and variant timed in one bench run, interleaved round by round.

In-process engines (hf): both checkpoints are loaded into this process; after every level's
warm-up for both, each round runs every level's batches for the base and then the same prompts for
the variant (base, variant, base, variant, ... for bench.repeats rounds), so a busy moment of the
machine slows both alike and their ratio (pipelines/ratios.py) stays meaningful when the absolute
figures do not. Peak memory is then that of the process holding both models (memory_kind says so).
The pair is cached as one unit under `<cache_dir>/bench/pair-<base>-<variant>-<key>`, the key a hash
of both checkpoints' bench keys (checkpoint hash, bench settings, hardware, library versions): a
variant benchmark is never matched with a base timed in another run, because a new pair re-times
both. Both records carry the run's `pairing_id`; ratios are only computed between records sharing
one. The base against itself (quant=none) is one plain benchmark. Served engines are not paired
here (each server is timed while it serves; see README "Benchmark").
Run by `python -m pipelines.run`; `python benchmarks/paired_under_load.py` shows it under a CPU hog.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from tqdm.auto import tqdm

from pipelines.bench import RESULT_FILE, bench_key, in_process_result, plan_prompts, run_benchmark
from pipelines.bench.conditions import conditions, snapshot
from pipelines.bench.measure import summarize_level
from pipelines.bench.scenarios import LevelPlan
from pipelines.config import BenchConfig, RunConfig
from pipelines.errors import ConfigError
from pipelines.ratios import level_ratios
from pipelines.records import BenchResult, Variant, load_record, save_record
from pipelines.registry import BENCH_ENGINES, resolve
from pipelines.storage import atomic_directory, cache_entry, library_versions, stable_hash, write_manifest

ROLES = ("base", "variant")


def run_paired_benchmark(cfg: RunConfig, base: Variant, variant: Variant) -> tuple[BenchResult, BenchResult]:
    """(base, variant) BenchResults from one interleaved run (or its cache), the variant's with ratios."""
    if variant.content_hash == base.content_hash:
        result = run_benchmark(cfg, variant)
        return result, result
    engine_class = resolve(BENCH_ENGINES, "bench engine", cfg.bench.engine)
    if engine_class.runs_levels:
        raise ConfigError(f"bench.engine={cfg.bench.engine} times a served endpoint; it is not paired in process")
    versions = library_versions(*engine_class.libraries)
    key = pair_key(cfg, base, variant, versions)
    out_dir = Path(cfg.cache_dir) / "bench" / f"pair-{base.name}-{variant.name}-{key}"
    # Verified before reuse (storage.cache_entry); concurrent jobs time one pair once.
    with cache_entry(out_dir, cfg.overwrite) as manifest:
        if manifest is not None:
            pair = [dataclasses.replace(load_record(BenchResult, out_dir / f"{role}-{RESULT_FILE}"), from_cache=True)
                    for role in ROLES]
        else:
            pair = _time_pair(engine_class, cfg, {"base": base, "variant": variant}, versions, out_dir)
    base_bench, bench = pair
    # Recomputed on every read: the records keep the rounds, the confidence is today's gate's.
    bench.ratios = level_ratios(bench, base_bench, cfg.gate.confidence)
    return base_bench, bench


def pair_key(cfg: RunConfig, base: Variant, variant: Variant, versions: dict[str, str]) -> str:
    return stable_hash({role: bench_key(cfg, v, versions) for role, v in zip(ROLES, (base, variant))})


def _time_pair(engine_class, cfg: RunConfig, variants: dict[str, Variant], versions: dict[str, str],
               out_dir: Path) -> list[BenchResult]:
    engines = {role: engine_class(Path(v.checkpoint_dir), cfg.model, cfg.hardware.device, **cfg.bench.params)
               for role, v in variants.items()}
    plans = plan_prompts(cfg, variants["base"])  # the same prompts for both: one tokenizer, paired requests
    before = snapshot()
    timings, peaks = interleave(engines, plans, cfg.bench)
    after = snapshot()
    # The directory name plus a fresh token: a rerun with overwrite=true is another run.
    pairing_id = f"{out_dir.name}-{secrets.token_hex(4)}"
    results = []
    for role, variant in variants.items():
        levels = [summarize_level(plan.batch_size, timings[role][i], cfg.bench.slo, peaks[role][i])
                  for i, plan in enumerate(plans)]
        memory_kind = f"{engines[role].memory_kind} (base and variant loaded together)"
        result = in_process_result(cfg, variant, engines[role], levels, versions,
                                   conditions(before, after, levels), memory_kind)
        results.append(dataclasses.replace(result, pairing_id=pairing_id))
    _store_pair(results, out_dir, cfg, variants)
    return results


def interleave(engines: dict, plans: list[LevelPlan], bench: BenchConfig) -> tuple[dict, dict]:
    """Per role and level, the timings of each round and the peak memory; rounds alternate the roles."""
    for plan in plans:  # warm-ups first, so no round pays for one-off compilation and caches
        for engine in engines.values():
            for batch in plan.warmup_batches:
                engine.run_batch(batch, bench.output_tokens)
    timings = {role: [[] for _ in plans] for role in engines}
    peaks = {role: [0] * len(plans) for role in engines}
    with tqdm(total=bench.repeats * len(plans) * len(engines), desc="bench base+variant, paired", unit="run") as bar:
        for round_index in range(bench.repeats):
            for i, plan in enumerate(plans):
                for role, engine in engines.items():
                    engine.reset_peak_memory()
                    timings[role][i].append([t for batch in plan.repeats[round_index]
                                             for t in engine.run_batch(batch, bench.output_tokens)])
                    peaks[role][i] = max(peaks[role][i], engine.peak_memory())
                    bar.update()
    return timings, peaks


def _store_pair(results: list[BenchResult], out_dir: Path, cfg: RunConfig, variants: dict[str, Variant]) -> None:
    with atomic_directory(out_dir) as scratch:
        for role, result in zip(ROLES, results):
            save_record(result, scratch / f"{role}-{RESULT_FILE}")
        # The manifest is written last: a directory without one is never taken as a finished pair.
        write_manifest(scratch, {"pairing_id": results[0].pairing_id, "bench": dataclasses.asdict(cfg.bench),
                                 "hardware": cfg.hardware.name, "versions": results[0].versions,
                                 **{f"{role}_hash": v.content_hash for role, v in variants.items()}})
