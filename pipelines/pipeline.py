"""The pipeline as a Python API: one variant end to end, in the order the stages flow.

    from pipelines.pipeline import compose_config, run_variant
    outcome = run_variant(compose_config(["quant=fp8", "eval=quick"]))
    print(outcome.verdict.decision)

quantize -> evaluate (base once, cached) -> fidelity -> benchmark -> cost -> gate -> track.
A failing stage is recorded in the Outcome (and as a FAILED MLflow run); nothing computed before
it is lost, because every stage caches its result on disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from pipelines import evaluate, exit_codes, interrupts, models, preflight, serve, track
from pipelines.cli import compose_all
from pipelines.config import QuantConfig, RunConfig, load_group_config
from pipelines.errors import UserError, failure_line
from pipelines.evaluate import agreement
from pipelines.evaluate.sequential import evaluate_sequential
from pipelines.quantize import run_quantize
from pipelines.records import (BenchResult, CostResult, EvalResult, Fidelity, Outcome, Variant, Verdict,
                               save_record)
from pipelines.redact import redact
from pipelines.serve import is_served, sigterm_as_interrupt
from pipelines.shape import read_model_shape
from pipelines.stage_log import StageLog
from pipelines.storage import atomic_write_text
from pipelines.track import resolved_config
from pipelines.track.keys import outcome_metrics, outcome_summary

log = logging.getLogger(__name__)

BASELINE: QuantConfig = load_group_config("quant", "none")
# An evaluate stage that scores base and variant together (run_variant's `evaluator`).
Evaluator = Callable[[RunConfig, Variant, Variant], tuple[EvalResult, EvalResult]]
# Written instead of outcome.json when Ctrl-C or SIGTERM cut the run short.
INTERRUPTED = "INTERRUPTED"


def compose_config(overrides: list[str] | None = None) -> RunConfig:
    """The same validated config the CLI builds, for use from Python or a notebook."""
    configs = compose_all(list(overrides or []))
    if len(configs) != 1:
        raise UserError(f"compose_config takes one configuration, the overrides make {len(configs)}")
    return configs[0]


def run_variant(cfg: RunConfig, output_dir: Path | None = None, parent_run_id: str | None = None,
                preflighted: bool = False, evaluator: Evaluator | None = None) -> Outcome:
    """Run every stage for `cfg.quant` against the base; returns what each stage produced.

    `preflighted=True` only from the CLI, which preflights every config of a command before its first job.
    `evaluator(cfg, base_variant, variant)` replaces the evaluate stage (in process only): the recipe
    search (pipelines/search) scores each side of its split with it."""
    models.offline_environment(cfg.model)
    if not preflighted:
        preflight.preflight(cfg)
    output_dir = Path(output_dir or Path(cfg.cache_dir) / "runs" / f"{cfg.model.name}-{cfg.quant.name}")
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(resolved_config(cfg)))
    (output_dir / INTERRUPTED).unlink(missing_ok=True)
    log.info("variant %s of %s: outputs in %s", cfg.quant.name, cfg.model.name, output_dir)
    try:
        outcome = _run_stages(cfg, output_dir, evaluator)
        interrupts.entering("track")
        _track(cfg, outcome, parent_run_id)
        _save(outcome, output_dir)
    except KeyboardInterrupt:
        # outcome.json and summary.json mark a finished run; an interrupted one says so instead.
        atomic_write_text(output_dir / INTERRUPTED, f"{interrupts.message()}\n")
        raise
    except UserError as error:  # the folder still says what happened, with the code the process returns
        _save(failed_outcome(cfg, error, output_dir), output_dir)
        raise
    return outcome


def failed_outcome(cfg: RunConfig, error: BaseException, output_dir: Path | None = None) -> Outcome:
    """The record of a variant that ended before its gate: its error in one line, and its exit code."""
    code = exit_codes.of_exception(error)
    text = f"invalid input: {error}" if code == exit_codes.INVALID_INPUT else failure_line(error)
    return Outcome(variant_name=cfg.quant.name, model=cfg.model.name, error=redact(text),
                   output_dir=str(output_dir) if output_dir else None, exit_code=code)


def _run_stages(cfg: RunConfig, output_dir: Path, evaluator: Evaluator | None) -> Outcome:
    """The stages in order; a failing one ends the run with what the ones before it produced."""
    run, error = StageLog(), None
    try:
        with run.stage("load base", timed=False):
            base = models.resolve_base(cfg.model)
        with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: every server started here is stopped
            _stages(cfg, base, output_dir, run, evaluator)
    except UserError:
        raise
    except Exception as failure:  # any stage's failure is this variant's failure; the sweep goes on
        log.exception("variant %s failed in stage %s", cfg.quant.name, run.failed)
        error = redact(f"{run.failed}: {failure_line(failure)}")
    outcome = Outcome(variant_name=cfg.quant.name, model=cfg.model.name, output_dir=str(output_dir),
                      stages=run.times, error=error, **run.results)
    outcome.exit_code = exit_codes.of_outcome(outcome, cfg.gate)  # once per variant: every record carries it
    return outcome


def _stages(cfg: RunConfig, base, output_dir: Path, run: StageLog, evaluator: Evaluator | None) -> None:
    """quantize -> evaluate (or serve both, score each, time them paired) -> fidelity -> benchmark -> cost -> gate."""
    with run.stage("quantize", cached=("variant",)):
        base_variant = run.keep(base_variant=quantize_variant(cfg, BASELINE, base))
        variant = run.keep(variant=quantize_variant(cfg, cfg.quant, base))
    base_bench = bench = base_cost = cost = None
    if is_served(cfg):  # serve and score the base, then the variant beside it; time both alternately
        base_eval, variant_eval, base_bench, bench = _serve_and_measure(
            cfg, {"base": base_variant, "variant": variant}, output_dir, run)
    else:
        with run.stage("evaluate", cached=("base_eval", "variant_eval")):
            if evaluator is not None or cfg.eval.sequential:  # sequential: look by look until decided
                base_eval, variant_eval = (evaluator or _evaluate_sequential)(cfg, base_variant, variant)
                run.keep(base_eval=base_eval, variant_eval=variant_eval)
            else:
                base_eval = run.keep(base_eval=_evaluate(cfg, base_variant))
                variant_eval = run.keep(variant_eval=_evaluate(cfg, variant))
    with run.stage("fidelity"):
        fidelity = run.keep(fidelity=_fidelity(cfg, base_eval, variant_eval))
    if cfg.bench.enabled and bench is None:
        with run.stage("benchmark", cached=("base_bench", "bench")):  # paired: both timed in one run
            base_bench, bench = benchmark_pair(cfg, base_variant, variant)
            run.keep(base_bench=base_bench, bench=bench)
    if cfg.bench.enabled:
        with run.stage("cost"):
            base_cost = run.keep(base_cost=price(cfg, base_bench, base_variant))
            cost = run.keep(cost=price(cfg, bench, variant, base_bench))
    with run.stage("gate"):
        run.keep(verdict=_gate(cfg, fidelity, bench, base_bench, cost, base_cost))


def _save(outcome: Outcome, output_dir: Path) -> None:
    """outcome.json and summary.json, each with the exit code the process will return for this variant."""
    save_record(outcome, output_dir / "outcome.json")
    summary = outcome_summary(outcome, outcome_metrics(outcome))
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")


def quantize_variant(cfg: RunConfig, quant: QuantConfig, base) -> Variant:
    """The quantize stage for one quant config (the baseline too), cached."""
    return run_quantize(quant, base, Path(cfg.cache_dir), seed=cfg.seed, overwrite=cfg.overwrite)


def _evaluate(cfg: RunConfig, variant: Variant) -> EvalResult:
    return evaluate.run_evaluate(cfg, variant)


def _evaluate_sequential(cfg: RunConfig, base_variant: Variant, variant: Variant) -> tuple[EvalResult, EvalResult]:
    return evaluate_sequential(cfg, base_variant, variant)


def _serve_and_measure(cfg: RunConfig, variants: dict[str, Variant], output_dir: Path, run: StageLog
                       ) -> tuple[EvalResult, EvalResult, BenchResult | None, BenchResult | None]:
    """Serve and score the base, then the variant with the base's server still up; with a served bench
    engine, time both endpoints in alternating rounds; stop both; then check agreement in process."""
    # scipy (speed ratios): loaded when a run benchmarks, not by --cfg job or compose_config
    from pipelines.bench import times_endpoint
    from pipelines.bench.paired import run_paired_served_benchmark

    server, served, evals, benches = serve.make_server(cfg), {}, {}, (None, None)
    with contextlib.ExitStack() as servers:  # both servers are stopped however this block ends
        for role, variant in variants.items():
            with run.stage(f"serve {role}"):
                served[role] = servers.enter_context(server.serve(variant, role, output_dir))
                evals[role] = run.keep(**{f"{role}_eval": evaluate.run_evaluate(cfg, variant, served[role])})
        if cfg.bench.enabled and times_endpoint(cfg):
            with run.stage("benchmark", cached=("base_bench", "bench")):  # paired: alternating rounds
                benches = run_paired_served_benchmark(cfg, variants, served)
                run.keep(base_bench=benches[0], bench=benches[1])
    for role, result in evals.items():
        result.served_identity, result.served_identity_verified = served[role].identity, served[role].identity_verified
    # In-process scoring of the agreement items runs after the servers are gone (memory).
    with run.stage("agreement"):
        for role, variant in variants.items():
            evals[role].agreement = agreement.served_agreement(cfg, variant, evals[role],
                                                     "base" if role == "base" else cfg.quant.name)
    return evals["base"], evals["variant"], *benches


def _fidelity(cfg: RunConfig, base_eval: EvalResult, variant_eval: EvalResult) -> Fidelity:
    from pipelines.fidelity import compare  # scipy and statsmodels: loaded when a run compares

    fidelity = compare(base_eval, variant_eval, confidence=cfg.gate.confidence,
                       bootstrap_samples=cfg.eval.bootstrap_samples, seed=cfg.seed,
                       reference_name="base", variant_name=cfg.quant.name)
    fidelity.agreement = [*base_eval.agreement, *variant_eval.agreement]
    fidelity.unverified_endpoints = {role: result.served_identity or "unverified"
                                     for role, result in (("base", base_eval), ("variant", variant_eval))
                                     if not result.served_identity_verified}
    return fidelity


def benchmark_pair(cfg: RunConfig, base_variant: Variant, variant: Variant) -> tuple[BenchResult, BenchResult]:
    """The benchmark stage: base and variant timed in interleaved rounds, cached as one pair."""
    from pipelines.bench.paired import run_paired_benchmark  # scipy: loaded when a run benchmarks

    return run_paired_benchmark(cfg, base_variant, variant)


def price(cfg: RunConfig, bench: BenchResult, variant: Variant, base_bench: BenchResult | None = None) -> CostResult:
    """The cost stage: $/1M tokens and replicas from a benchmark, the saving against its paired base."""
    from pipelines.cost import estimate_cost  # scipy: loaded when a run prices

    # The quantize stage read the shape; it is None only where config.json describes no decoder,
    # and reading it here again raises the error that says so.
    shape = variant.shape or read_model_shape(variant.checkpoint_dir)
    return estimate_cost(bench, cfg.hardware, cfg.bench, shape, base_bench, cfg.gate.confidence)


def _gate(cfg: RunConfig, fidelity: Fidelity, bench: BenchResult | None, base_bench: BenchResult | None,
          cost: CostResult | None, base_cost: CostResult | None) -> Verdict:
    from pipelines.gate import decide  # scipy and statsmodels: loaded when a run is gated

    return decide(cfg.gate, fidelity, cost=cost, base_cost=base_cost, bench=bench, base_bench=base_bench)


def _track(cfg: RunConfig, outcome: Outcome, parent_run_id: str | None) -> None:
    """Log the outcome; a tracker that fails makes the variant a failed stage (exit 3), its verdict kept."""
    tracker = track.make_tracker(cfg.tracking)
    if tracker is None:
        return
    try:
        outcome.run_id = tracker.log_outcome(outcome, resolved_config(cfg), parent_run_id=parent_run_id,
                                             reference=cfg.quant.backend == "none")
    except Exception as failure:
        log.error("variant %s: tracking failed: %s", cfg.quant.name, failure_line(failure), exc_info=True)
        outcome.error = redact(f"track: {failure_line(failure)}")
        outcome.exit_code = exit_codes.of_outcome(outcome, cfg.gate)
