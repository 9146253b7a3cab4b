"""What the jobs of one command share: the tracker's parent run, their outcomes, the champion, the report.

Jobs may run in other processes (Hydra's joblib launcher), so a sweep lives in a directory named
by an environment variable the jobs inherit; each job leaves its outcome there atomically.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import Counter
from pathlib import Path

from pipelines import exit_codes, preflight
from pipelines.config import RunConfig
from pipelines.champion import choose
from pipelines.records import ChampionDecision, Outcome, load_record, save_record
from pipelines.report import text_table, write_sweep_report
from pipelines.track import Tracker, make_tracker, resolved_config

log = logging.getLogger(__name__)

SWEEP_DIR_ENV = "QUANTGATE_SWEEP_DIR"
PARENT_ENV = "QUANTGATE_PARENT_RUN_ID"
# A variant whose job ended without writing its outcome (SLURM's scancel, a node failure, a time limit).
NO_RESULT = "its job ended without a result (cancelled, killed or out of time); run the same command to resume"
_single_run: list[Outcome] = []


def active() -> bool:
    return SWEEP_DIR_ENV in os.environ


def parent_run_id() -> str | None:
    return os.environ.get(PARENT_ENV)


def preflight_all(configs: list[RunConfig]) -> None:
    for cfg in configs:
        preflight.preflight(cfg)


def start(configs: list[RunConfig]) -> None:
    cfg = configs[0]
    # Unnamed sweeps started in the same second must not share (and mix) their outcomes.
    name = cfg.sweep or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    directory = Path(cfg.cache_dir).resolve() / "sweeps" / name
    os.environ[SWEEP_DIR_ENV] = str(directory)
    tracker = make_tracker(cfg.tracking)
    if tracker is not None:
        os.environ[PARENT_ENV] = tracker.start_sweep(name, resolved_config(cfg))
    log.info("sweep %s: %d variants; outcomes in %s", name, len(configs), directory)


def record(outcome: Outcome) -> None:
    """Keep a variant's outcome, its exit code already computed, for the command's report and exit code."""
    if active():
        name = Path(outcome.output_dir or outcome.variant_name).name
        save_record(outcome, Path(os.environ[SWEEP_DIR_ENV]) / "outcomes" / f"{name}.json")
    else:
        _single_run.append(outcome)


def finish(configs: list[RunConfig]) -> int:
    """Crown the champion, report every outcome, log the sweep's report, and return the command's exit code."""
    outcomes = with_missing(_load_outcomes(), configs) if active() else list(_single_run)
    directory = Path(os.environ.get(SWEEP_DIR_ENV) or outcomes[0].output_dir or configs[0].cache_dir)
    tracker = make_tracker(configs[0].tracking)
    champions = crown_champions(outcomes, configs[0].gate.champion_policy, tracker)
    files = write_sweep_report(outcomes, directory / "report", champions, resolved_configs(configs))
    print(text_table(outcomes))
    for outcome in outcomes:
        _print_verdict(outcome)
    for decision in champions:
        print(f"champion of {decision.model} ({decision.policy}): {decision.champion or 'none'}; {decision.reason}")
    log.info("report: %s", ", ".join(str(f) for f in files))
    if tracker is not None and active() and parent_run_id():
        tracker.log_sweep_report(parent_run_id(), files, outcomes, champions)
    elif tracker is not None and outcomes[0].run_id:  # a single run: its report goes with its run
        tracker.log_run_report(outcomes[0].run_id, files)
    print(f"report: {files[0]}")
    return exit_codes.of_command(outcomes)


def crown_champions(outcomes: list[Outcome], policy: str, tracker: Tracker | None) -> list[ChampionDecision]:
    """Per base model: the champion among its PROMOTEd variants and the alias's holder; the alias moves once."""
    decisions = []
    for model in sorted({o.model for o in outcomes}):
        holder = tracker.alias_holder(model) if tracker is not None else None
        decision = choose([o for o in outcomes if o.model == model], policy, holder)
        if tracker is not None:  # it logs whether the alias moved or stays, in one line
            tracker.crown(decision)
        decisions.append(decision)
    return decisions


def resolved_configs(configs: list[RunConfig]) -> list[dict]:
    return [resolved_config(cfg) for cfg in configs]


def with_missing(outcomes: list[Outcome], configs: list[RunConfig]) -> list[Outcome]:
    """The outcomes, and a failed one for each configured variant that left none."""
    left = Counter(outcome.variant_name for outcome in outcomes)
    missing = []
    for cfg in configs:
        if left[cfg.quant.name] > 0:
            left[cfg.quant.name] -= 1
        else:
            missing.append(Outcome(variant_name=cfg.quant.name, model=cfg.model.name, error=NO_RESULT,
                                   exit_code=exit_codes.STAGE_FAILED))
    return outcomes + missing


def _print_verdict(outcome: Outcome) -> None:
    if outcome.error:
        print(f"{outcome.variant_name}: FAILED ({outcome.error})")
        return
    print(f"{outcome.variant_name}: {outcome.verdict.decision}")
    for reason in outcome.verdict.reasons:
        print(f"  - {reason}")
    for record in outcome.variant_eval.sequential if outcome.variant_eval else []:  # eval.sequential=true
        print(f"  sequential {record.task}: {record.items_used} of {record.items_available} items, "
              f"{record.looks} look{'s' if record.looks != 1 else ''}, stopped: {record.stop_reason}")


def _load_outcomes() -> list[Outcome]:
    folder = Path(os.environ[SWEEP_DIR_ENV]) / "outcomes"
    return [load_record(Outcome, path) for path in sorted(folder.glob("*.json"))]
