"""Paired benchmarking: base and variant timed in one bench run, interleaved round by round.

In-process engines (hf): both checkpoints are loaded into this process; after every level's
warm-up for both, each round runs every level's batches for the base and then the same prompts for
the variant (base, variant, base, variant, ... for bench.repeats rounds), so a busy moment of the
machine slows both alike and their ratio (pipelines/ratios.py) stays meaningful when the absolute
figures do not. Peak memory is then that of the process holding both models (memory_kind says so).
Served engines (openai: GuideLLM), `run_paired_served_benchmark`: both servers are up at once and
the rounds alternate the endpoints: base's round (one GuideLLM run of every level, its warm-up
requests dropped), then the variant's, for bench.repeats rounds; each round is one repeat of
every level.
The pair is cached as one unit under `<cache_dir>/bench/pair-<base>-<variant>-<key>`, the key a hash
of both checkpoints' bench keys (checkpoint hash, bench settings, hardware, library versions, and
the serving engine when served): a variant benchmark is never matched with a base timed in another
run, because a new pair re-times both. Both records carry the run's `pairing_id`; ratios are only
computed between records sharing one. The base against itself (quant=none) is one plain benchmark.
Run by `python -m pipelines.run`; `python benchmarks/paired_under_load.py` shows it under a CPU hog.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from tqdm.auto import tqdm

from pipelines.bench import RESULT_FILE, bench_key, in_process_result, plan_prompts, run_benchmark, served_result
from pipelines.bench.conditions import conditions, snapshot
from pipelines.bench.engines.openai import combine_rounds
from pipelines.bench.measure import summarize_level, summarize_served_level
from pipelines.bench.scenarios import LevelPlan
from pipelines.config import BenchConfig, RunConfig
from pipelines.errors import ConfigError
from pipelines.ratios import level_ratios
from pipelines.records import BenchResult, ServedModel, Variant, load_record, save_record
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
    variants = {"base": base, "variant": variant}
    return _cached_pair(cfg, variants, pair_key(cfg, base, variant, versions),
                        lambda out_dir: _time_pair(engine_class, cfg, variants, versions, out_dir))


def run_paired_served_benchmark(cfg: RunConfig, variants: dict[str, Variant],
                                served: dict[str, ServedModel]) -> tuple[BenchResult, BenchResult]:
    """(base, variant) BenchResults of both endpoints timed in alternating rounds (or the pair's cache)."""
    base, variant = variants["base"], variants["variant"]
    if variant.content_hash == base.content_hash:
        result = run_benchmark(cfg, variant, served["variant"])
        return result, result
    engine_class = resolve(BENCH_ENGINES, "bench engine", cfg.bench.engine)
    if not engine_class.runs_levels:
        raise ConfigError(f"bench.engine={cfg.bench.engine} times a model in process; it is not paired through "
                          "endpoints")
    versions = library_versions(*engine_class.libraries)
    return _cached_pair(cfg, variants, pair_key(cfg, base, variant, versions, served),
                        lambda out_dir: _time_served_pair(engine_class, cfg, variants, served, versions, out_dir))


def pair_key(cfg: RunConfig, base: Variant, variant: Variant, versions: dict[str, str],
             served: dict[str, ServedModel] | None = None) -> str:
    served = served or {}
    return stable_hash({role: bench_key(cfg, v, versions, served.get(role)) for role, v in zip(ROLES, (base, variant))})


def _cached_pair(cfg: RunConfig, variants: dict[str, Variant], key: str, time_pair) -> tuple[BenchResult, BenchResult]:
    """The pair under `key` from the cache, else timed by `time_pair(out_dir)`; the variant's with ratios."""
    out_dir = Path(cfg.cache_dir) / "bench" / f"pair-{variants['base'].name}-{variants['variant'].name}-{key}"
    # Verified before reuse (storage.cache_entry); concurrent jobs time one pair once.
    with cache_entry(out_dir, cfg.overwrite) as manifest:
        if manifest is not None:
            pair = [dataclasses.replace(load_record(BenchResult, out_dir / f"{role}-{RESULT_FILE}"), from_cache=True)
                    for role in ROLES]
        else:
            pair = time_pair(out_dir)
    base_bench, bench = pair
    # Recomputed on every read: the records keep the rounds, the confidence is today's gate's.
    bench.ratios = level_ratios(bench, base_bench, cfg.gate.confidence)
    return base_bench, bench


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


def _time_served_pair(engine_class, cfg: RunConfig, variants: dict[str, Variant], served: dict[str, ServedModel],
                      versions: dict[str, str], out_dir: Path) -> list[BenchResult]:
    engines = {role: engine_class(served[role], cfg, **cfg.bench.params) for role in ROLES}
    with atomic_directory(out_dir) as scratch:
        before = snapshot()
        runs = alternate_rounds(engines, cfg.bench, {role: scratch / role for role in ROLES})
        after = snapshot()
        pairing_id = f"{out_dir.name}-{secrets.token_hex(4)}"
        results = []
        for role in ROLES:
            levels = [summarize_served_level(level, cfg.bench.slo) for level in runs[role].levels]
            reports = [str(out_dir / path.relative_to(scratch)) for path in runs[role].reports]
            result = served_result(cfg, variants[role], served[role], engines[role], levels, versions,
                                   conditions(before, after, levels), reports)
            results.append(dataclasses.replace(result, pairing_id=pairing_id))
        _write_pair(results, scratch, cfg, variants)
    return results


def alternate_rounds(engines: dict, bench: BenchConfig, out_dirs: dict[str, Path]) -> dict:
    """Per role, its LevelRun of bench.repeats rounds, taken in the order base, variant, base, variant, ..."""
    rounds = {role: [] for role in engines}
    for repeat in range(bench.repeats):
        for role, engine in engines.items():
            out_dirs[role].mkdir(parents=True, exist_ok=True)
            rounds[role].append(engine.run_round(out_dirs[role], repeat))
    return {role: combine_rounds(runs, bench.requests_per_level * bench.repeats) for role, runs in rounds.items()}


def _store_pair(results: list[BenchResult], out_dir: Path, cfg: RunConfig, variants: dict[str, Variant]) -> None:
    with atomic_directory(out_dir) as scratch:
        _write_pair(results, scratch, cfg, variants)


def _write_pair(results: list[BenchResult], directory: Path, cfg: RunConfig, variants: dict[str, Variant]) -> None:
    for role, result in zip(ROLES, results):
        save_record(result, directory / f"{role}-{RESULT_FILE}")
    # The manifest is written last: a directory without one is never taken as a finished pair.
    write_manifest(directory, {"pairing_id": results[0].pairing_id, "bench": dataclasses.asdict(cfg.bench),
                               "hardware": cfg.hardware.name, "versions": results[0].versions,
                               "server": results[0].server,
                               **{f"{role}_hash": v.content_hash for role, v in variants.items()}})
