"""The pipeline as a Python API: one variant end to end, in the order the stages flow.

    from pipelines.pipeline import compose_config, run_variant
    outcome = run_variant(compose_config(["quant=fp8", "eval=quick"]))
    print(outcome.verdict.decision)

quantize -> evaluate (base once, cached) -> fidelity -> benchmark -> cost -> gate -> track.
A failing stage is recorded in the Outcome (and as a FAILED MLflow run); nothing computed before
it is lost, because every stage caches its result on disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipelines import interrupts
from pipelines.config import QuantConfig, RunConfig, load_group_config
from pipelines.errors import UserError
from pipelines.logs import adopt_library_logs
from pipelines.records import Outcome, StageTime, save_record
from pipelines.serve import is_served, sigterm_as_interrupt
from pipelines.storage import atomic_write_text

log = logging.getLogger(__name__)

BASELINE: QuantConfig = load_group_config("quant", "none")
# Written instead of outcome.json when Ctrl-C or SIGTERM cut the run short.
INTERRUPTED = "INTERRUPTED"


def compose_config(overrides: list[str] | None = None) -> RunConfig:
    """The same validated config the CLI builds, for use from Python or a notebook."""
    from pipelines.cli import compose_all

    configs = compose_all(list(overrides or []))
    if len(configs) != 1:
        raise UserError(f"compose_config takes one configuration, the overrides make {len(configs)}")
    return configs[0]


def run_variant(cfg: RunConfig, output_dir: Path | None = None, parent_run_id: str | None = None) -> Outcome:
    """Run every stage for `cfg.quant` against the base; returns what each stage produced."""
    from pipelines.models import offline_environment
    from pipelines.preflight import preflight

    offline_environment(cfg.model)
    preflight(cfg)
    output_dir = Path(output_dir or Path(cfg.cache_dir) / "runs" / f"{cfg.model.name}-{cfg.quant.name}")
    outcome = Outcome(variant_name=cfg.quant.name, model=cfg.model.name, output_dir=str(output_dir))
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(resolved_config(cfg)))
    (output_dir / INTERRUPTED).unlink(missing_ok=True)
    log.info("variant %s of %s: outputs in %s", cfg.quant.name, cfg.model.name, output_dir)
    try:
        _run_stages(cfg, outcome, output_dir)
        interrupts.entering("track")
        _save(cfg, outcome, output_dir)
        _track(cfg, outcome, parent_run_id)
    except KeyboardInterrupt:
        # outcome.json and summary.json mark a finished run; an interrupted one says so instead.
        atomic_write_text(output_dir / INTERRUPTED,
                          f"interrupted during {interrupts.current_stage()}; run the same command to resume\n")
        raise
    return outcome


def _run_stages(cfg: RunConfig, outcome: Outcome, output_dir: Path) -> None:
    from pipelines.models import resolve_base

    stage = "load base"
    try:
        interrupts.entering(stage)
        base = resolve_base(cfg.model)
        with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: every server started here is stopped
            for stage, step in _stages(cfg, base, output_dir):
                interrupts.entering(stage)
                adopt_library_logs()  # libraries imported by the stage before keep their chatter in run.log
                started = time.time()
                try:
                    step(outcome)
                finally:  # a failed stage's time belongs to the run too
                    outcome.stages.append(StageTime(stage, started, time.time(), _reused(stage, outcome)))
                log.info("%s done in %.1f s", stage, outcome.stages[-1].ended - started)
    except UserError:
        raise
    except Exception as error:  # any stage's failure is this variant's failure; the sweep goes on
        log.exception("variant %s failed in stage %s", cfg.quant.name, stage)
        outcome.error = f"{stage}: {type(error).__name__}: {error}"


def _save(cfg: RunConfig, outcome: Outcome, output_dir: Path) -> None:
    """outcome.json and summary.json, each with the exit code the process will return for this variant."""
    from pipelines.sweep import exit_code_of
    from pipelines.track.keys import outcome_metrics, outcome_summary

    outcome.exit_code = exit_code_of(outcome, cfg)
    save_record(outcome, output_dir / "outcome.json")
    summary = outcome_summary(outcome, outcome_metrics(outcome))
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")


def _stages(cfg: RunConfig, base, output_dir: Path) -> list[tuple[str, Any]]:
    base_cfg = dataclasses.replace(cfg, quant=BASELINE)
    steps = [("quantize", lambda o: _quantize(cfg, base_cfg, base, o))]
    if is_served(cfg):  # one server at a time: serve the base, score and time it, stop; then the variant
        steps += [(f"serve {role}", lambda o, role=role: _serve_and_measure(cfg, o, role, output_dir))
                  for role in ("base", "variant")]
        steps += [("fidelity", lambda o: _fidelity(cfg, o))]
        if cfg.bench.enabled:
            steps += [("cost", lambda o: _cost(cfg, o))]
        return steps + [("gate", lambda o: _gate(cfg, o))]
    steps += [("evaluate", lambda o: _evaluate(cfg, o)),
              ("fidelity", lambda o: _fidelity(cfg, o))]
    if cfg.bench.enabled:
        steps += [("benchmark", lambda o: _benchmark(cfg, o)), ("cost", lambda o: _cost(cfg, o))]
    return steps + [("gate", lambda o: _gate(cfg, o))]


# The records each cached stage produces; the stage is "reused" when all of them came from the cache
# (the base's Variant is not among them: the unquantized base is never built, so never "cached").
_CACHED_RECORDS = {"quantize": ("variant",), "evaluate": ("base_eval", "variant_eval"),
                   "benchmark": ("base_bench", "bench")}


def _reused(stage: str, outcome: Outcome) -> bool:
    records = [getattr(outcome, name) for name in _CACHED_RECORDS.get(stage, ())]
    return bool(records) and all(record is not None and record.from_cache for record in records)


def _quantize(cfg: RunConfig, base_cfg: RunConfig, base, outcome: Outcome) -> None:
    from pipelines.quantize import run_quantize

    outcome.base_variant = run_quantize(base_cfg, base)
    outcome.variant = run_quantize(cfg, base)


def _evaluate(cfg: RunConfig, outcome: Outcome) -> None:
    from pipelines.evaluate import run_evaluate

    if cfg.eval.sequential:  # both scored look by look until the verdict is settled
        from pipelines.evaluate.sequential import evaluate_sequential

        outcome.base_eval, outcome.variant_eval = evaluate_sequential(cfg, outcome.base_variant, outcome.variant)
        return
    outcome.base_eval = run_evaluate(cfg, outcome.base_variant)
    outcome.variant_eval = run_evaluate(cfg, outcome.variant)


def _serve_and_measure(cfg: RunConfig, outcome: Outcome, role: str, output_dir: Path) -> None:
    """Serve one checkpoint, score (and benchmark) it through the endpoint, stop it, check agreement."""
    from pipelines.bench import run_benchmark
    from pipelines.evaluate import run_evaluate
    from pipelines.evaluate.agreement import served_agreement
    from pipelines.serve import make_server

    variant = outcome.base_variant if role == "base" else outcome.variant
    with make_server(cfg).serve(variant, role, output_dir) as served:
        result = run_evaluate(cfg, variant, served)
        bench = run_benchmark(cfg, variant, served) if cfg.bench.enabled else None
    # In-process scoring of the agreement items runs after the server is gone (memory).
    result.agreement = served_agreement(cfg, variant, result, "base" if role == "base" else cfg.quant.name)
    if role == "base":
        outcome.base_eval, outcome.base_bench = result, bench
    else:
        outcome.variant_eval, outcome.bench = result, bench


def _fidelity(cfg: RunConfig, outcome: Outcome) -> None:
    from pipelines.fidelity import compare

    outcome.fidelity = compare(outcome.base_eval, outcome.variant_eval, confidence=cfg.gate.confidence,
                               bootstrap_samples=cfg.eval.bootstrap_samples, seed=cfg.seed,
                               reference_name="base", variant_name=cfg.quant.name)
    outcome.fidelity.agreement = [*outcome.base_eval.agreement, *outcome.variant_eval.agreement]


def _benchmark(cfg: RunConfig, outcome: Outcome) -> None:
    from pipelines.bench import run_benchmark

    outcome.base_bench = run_benchmark(cfg, outcome.base_variant)
    outcome.bench = run_benchmark(cfg, outcome.variant)


def _cost(cfg: RunConfig, outcome: Outcome) -> None:
    from pipelines.sizing import read_model_shape
    from pipelines.cost import estimate_cost

    for bench, variant, field in ((outcome.base_bench, outcome.base_variant, "base_cost"),
                                  (outcome.bench, outcome.variant, "cost")):
        shape = read_model_shape(variant.checkpoint_dir)
        setattr(outcome, field, estimate_cost(bench, cfg.hardware, cfg.bench, shape))


def _gate(cfg: RunConfig, outcome: Outcome) -> None:
    from pipelines.gate import decide

    outcome.verdict = decide(cfg.gate, outcome.fidelity, cost=outcome.cost, base_cost=outcome.base_cost,
                             bench=outcome.bench, base_bench=outcome.base_bench)


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """The run's full config with secrets redacted: what is logged and written next to results."""
    from pipelines.track.keys import redact_config

    return redact_config(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


def _track(cfg: RunConfig, outcome: Outcome, parent_run_id: str | None) -> None:
    from pipelines.track import make_tracker

    tracker = make_tracker(cfg.tracking)
    if tracker is not None:
        is_base = cfg.quant.backend == "none"
        tracker.log_outcome(outcome, resolved_config(cfg), parent_run_id=parent_run_id, reference=is_base)
