"""Sequential evaluation (eval.sequential=true): stop scoring the variant once the verdict is settled.

    python -m pipelines.run eval.sequential=true quant=canary-w2

Each leaf task's items (its clusters, when it names a cluster key) are put in an order drawn from
eval.seed; every look scores the next eval.chunk_size items of every task still running, on the
base and on the variant alike (pipelines/evaluate/item_cache.py: each model's per-item results are
cached, so nothing is scored twice). After each look, an anytime-valid confidence sequence
(pipelines/confidence_sequence.py) per task is updated for every gate rule: accuracy drop (paired
per-item drop, mapped from [-1, 1] to [0, 1]), flip rate, and, for multiple-choice tasks, mean
choice KL clipped at KL_CLIP_FACTOR x gate.max_kl nats. A task stops when all its blocking rules
are decided (PASS or FAIL); every task stops as soon as one blocking rule FAILs (the verdict is
REJECT whatever the others say); otherwise at the end of its items. The records then hold the
items used, and the variant's record the confidence sequences' bounds at the stop, which
pipelines/fidelity.py puts in place of the fixed-n intervals: the gate decides on bounds that stay
valid however early the evaluation stopped. The reference-text KL is computed on the whole text
(it does not depend on the items) and keeps its fixed-n block bootstrap.

The error budget alpha = 1 - gate.confidence is split in two (an alpha-spending design, valid by
the union bound): the sequences run at alpha_looks = LOOKS_SHARE x alpha and decide every early
stop; a task that reaches the end of its suite undecided is decided instead by the gate's own
fixed-n intervals (Tango / Clopper-Pearson / cluster bootstrap, pipelines/fidelity.py) on all its
items at confidence 1 - alpha_final, alpha_final = alpha - alpha_looks. A wrong decision needs the
sequence or the final interval to miss, so P(any wrong decision) <= alpha_looks + alpha_final = alpha;
a full suite then reaches the verdict a fixed-n run at confidence 1 - alpha_final reaches.

Exercised by: pytest tests/test_sequential.py
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import RunConfig
from pipelines.confidence_sequence import METHOD, BettingConfidenceSequence, paired_to_unit, unit_to_drop
from pipelines.errors import ConfigError, InputError
from pipelines.evaluate import (cache_directory, effective_add_bos_token, requested_settings, suite_hash,
                                with_provenance)
from pipelines.evaluate.item_cache import ItemScorer
from pipelines.evaluate.reference import reference_text
from pipelines.evaluate.suites import resolve_include_path
from pipelines.evaluate.items import choice_divergence, document_cluster, write_items
from pipelines.models import load_tokenizer
from pipelines.records import EvalResult, SequentialTask, TaskResult, Variant, save_record
from pipelines.serve import is_served
from pipelines.storage import stable_hash, write_manifest

log = logging.getLogger(__name__)

# Choice KL is unbounded; the sequence needs values in [0, 1]. Clipping at 20 x the ceiling keeps
# FAIL exact (a clipped mean above the ceiling means the true one is) and makes PASS a statement
# about the mean of min(KL, clip): one item with KL at or over the clip adds clip / n to it.
KL_CLIP_FACTOR = 20.0
# Which look decided a task: an interim one (its confidence sequences) or the final fixed-n one.
DECIDED, SETTLED = "decided by the confidence sequence", "verdict settled"
EXHAUSTED = "suite exhausted, decided by the final fixed-n look"
# Share of alpha spent on the interim looks' sequences; the rest goes to the final fixed-n look.
LOOKS_SHARE = 0.5


def looks_alpha(confidence: float) -> float:
    """alpha_looks: the error the confidence sequences may spend across every interim look."""
    return (1 - confidence) * LOOKS_SHARE


def final_confidence(confidence: float) -> float:
    """1 - alpha_final: the level of the fixed-n intervals that decide a task at the end of its suite."""
    return 1 - ((1 - confidence) - looks_alpha(confidence))


def check(cfg: RunConfig) -> None:
    """Preflight: what a sequential run needs from the rest of the config."""
    if not cfg.eval.sequential:
        return
    if is_served(cfg):
        raise ConfigError(f"eval.sequential=true scores in-process only; drop it or use serve=inprocess "
                          f"(serve={cfg.serve.name})")
    for name, tol in [("gate.tolerance", cfg.gate.tolerance), *((f"gate.per_task.{k}", v)
                                                              for k, v in cfg.gate.per_task.items())]:
        if tol.kind != "absolute":
            raise ConfigError(f"eval.sequential=true needs absolute tolerances ({name} is {tol.kind}: it would move "
                              "with the base score as items arrive); set kind: absolute or eval.sequential=false")


@dataclasses.dataclass
class TaskPlan:
    task: str
    units: list[list[int]]  # doc ids per unit (an item, or a cluster's items), in the seeded order
    clustered: bool
    next_unit: int = 0
    stop_reason: str | None = None

    @property
    def available(self) -> int:
        return sum(map(len, self.units))

    def next_chunk(self, size: int) -> list[list[int]]:
        chunk, items = [], 0
        while self.next_unit < len(self.units) and items < size:
            chunk.append(self.units[self.next_unit])
            items += len(chunk[-1])
            self.next_unit += 1
        return chunk


class TaskMonitor:
    """The confidence sequences of one task's gate rules, and whether its blocking ones are decided."""

    def __init__(self, cfg: RunConfig, output_type: str) -> None:
        gate, alpha = cfg.gate, looks_alpha(cfg.gate.confidence)
        tolerance = gate.tolerance.max_drop
        self.thresholds = {"accuracy": (tolerance + 1) / 2}
        if gate.max_flip_rate is not None:
            self.thresholds["flip_rate"] = gate.max_flip_rate
        self.kl_clip = None
        if gate.max_kl is not None and output_type == "multiple_choice":
            self.kl_clip = KL_CLIP_FACTOR * gate.max_kl
            self.thresholds["kl"] = gate.max_kl / self.kl_clip
        self.sequences = {rule: BettingConfidenceSequence(alpha, [threshold])
                          for rule, threshold in self.thresholds.items()}
        self.blocking = [rule for rule in self.thresholds if rule in gate.blocking]
        self.items, self.looks = 0, 0

    def set_tolerance(self, tolerance: float) -> None:
        self.thresholds["accuracy"] = (tolerance + 1) / 2
        self.sequences["accuracy"] = BettingConfidenceSequence(self.sequences["accuracy"].alpha,
                                                               [self.thresholds["accuracy"]])

    def update(self, units: list[tuple[list[dict], list[dict]]]) -> None:
        """Add one look's units, each (base items, variant items) in the same doc order."""
        values: dict[str, list[float]] = {rule: [] for rule in self.thresholds}
        for base, variant in units:
            b = np.array([_unit_score(i) for i in base])
            v = np.array([_unit_score(i) for i in variant])
            values["accuracy"].append(float(np.mean(paired_to_unit(b, v))))
            if "flip_rate" in values:
                values["flip_rate"].append(float(np.mean(b != v)))
            if "kl" in values:
                kl, _ = choice_divergence([i["choice_loglikelihoods"] for i in base],
                                          [i["choice_loglikelihoods"] for i in variant])
                values["kl"].append(float(np.mean(np.minimum(kl, self.kl_clip))) / self.kl_clip)
            self.items += len(base)
        for rule, rule_values in values.items():
            self.sequences[rule].update(rule_values)
        self.looks += 1

    def status(self, rule: str) -> int:
        """-1 PASS (the sequence lies below the threshold), +1 FAIL (above), 0 undecided."""
        return int(self.sequences[rule].excludes(self.thresholds[rule])[0])

    def record(self, task: str, available: int, reason: str) -> SequentialTask:
        acc = self.sequences["accuracy"]
        flip = self.sequences.get("flip_rate") or _empty()
        kl = self.sequences.get("kl")
        return SequentialTask(
            task=task, items_used=self.items, items_available=available, looks=self.looks, stop_reason=reason,
            method=METHOD, drop_low=float(unit_to_drop(acc.low[0])), drop_high=float(unit_to_drop(acc.high[0])),
            flip_low=float(flip.low[0]), flip_high=float(flip.high[0]),
            kl_low=float(kl.low[0] * self.kl_clip) if kl else None,
            kl_high=float(kl.high[0] * self.kl_clip) if kl else None, kl_clip=self.kl_clip)


def _empty() -> BettingConfidenceSequence:
    return BettingConfidenceSequence(0.05, grid_step=1.0)


def _unit_score(item: dict) -> float:
    score = float(item["score"])
    if not 0.0 <= score <= 1.0:
        raise InputError(f"eval.sequential=true needs per-item scores in [0, 1]; an item scored {score}: "
                         "use a bounded metric or eval.sequential=false")
    return score


def evaluate_sequential(cfg: RunConfig, base: Variant, variant: Variant,
                        only: dict[str, list[int]] | None = None) -> tuple[EvalResult, EvalResult]:
    """Score base and variant look by look until every task stopped; returns both EvalResults.

    `only`: per task, the documents it may use (a split's side, pipelines/search/split.py); None: all."""
    start = time.perf_counter()
    scorers, settings, suite, text = _scorers(cfg, base, variant)
    plans = plan_tasks(cfg, scorers["base"].manager(), only)
    monitors: dict[str, TaskMonitor] = {}
    while active := [task for task, plan in plans.items() if plan.stop_reason is None]:
        chunks = {task: plans[task].next_chunk(cfg.eval.chunk_size) for task in active}
        wanted = {task: [doc for unit in units for doc in unit] for task, units in chunks.items()}
        scored = {role: scorer.score(wanted) for role, scorer in scorers.items()}
        meta = scorers["base"].task_meta()
        for task in active:
            if task not in monitors:
                monitors[task] = _monitor(cfg, task, meta[task])
            monitors[task].update([([scored["base"][task][d] for d in unit], [scored["variant"][task][d] for d in unit])
                            for unit in chunks[task]])
        _stop(plans, monitors, active)
        log.info("sequential look %d: %s", max(m.looks for m in monitors.values()),
                 "; ".join(f"{t} {monitors[t].items}/{plans[t].available} items"
                           + (f" ({plans[t].stop_reason})" if plans[t].stop_reason else "") for t in plans))
    records = [m.record(task, plans[task].available, plans[task].stop_reason) for task, m in monitors.items()]
    used = {task: sorted(d for unit in plan.units[:plan.next_unit] for d in unit) for task, plan in plans.items()}
    key = stable_hash({"base": base.content_hash, "variant": variant.content_hash, "used": used, "suite": suite,
                       "settings": settings["variant"]})
    seconds = time.perf_counter() - start
    return (_result(cfg, scorers["base"], settings["base"], suite, used, text, key, seconds, []),
            _result(cfg, scorers["variant"], settings["variant"], suite, used, text, key, seconds, records))


def evaluate_fixed(cfg: RunConfig, base: Variant, variant: Variant,
                   doc_ids: dict[str, list[int]]) -> tuple[EvalResult, EvalResult]:
    """Score base and variant on exactly `doc_ids` (per task) in one look: a fixed-n evaluation of
    those items, whose EvalResults carry no sequence, so the gate decides on fixed-n intervals."""
    start = time.perf_counter()
    scorers, settings, suite, text = _scorers(cfg, base, variant)
    used = {task: sorted(ids) for task, ids in doc_ids.items()}
    for scorer in scorers.values():
        scorer.score(used)
    key = stable_hash({"base": base.content_hash, "variant": variant.content_hash, "used": used, "suite": suite,
                       "settings": settings["variant"], "fixed": True})
    seconds = time.perf_counter() - start
    return (_result(cfg, scorers["base"], settings["base"], suite, used, text, key, seconds, []),
            _result(cfg, scorers["variant"], settings["variant"], suite, used, text, key, seconds, []))


def _scorers(cfg: RunConfig, base: Variant, variant: Variant) -> tuple[dict[str, ItemScorer], dict, str, str | None]:
    """Each model's per-item scorer, its eval settings, the suite's content hash and the reference text."""
    include, text = resolve_include_path(cfg.eval.include_path), reference_text(cfg.eval.reference_text)
    suite = suite_hash(include)
    settings = {role: _settings(cfg, model, requested_settings(cfg, text)) for role, model in
                (("base", base), ("variant", variant))}
    full = stable_hash({"settings": {**requested_settings(cfg, text), "limit": None}, "suite": suite})
    scorers = {role: ItemScorer(cfg, model, settings[role], suite, include,
                                cache_directory(cfg, model.content_hash, full))
               for role, model in (("base", base), ("variant", variant))}
    return scorers, settings, suite, text


def task_units(cfg: RunConfig, manager) -> dict[str, tuple[list[list[int]], bool]]:
    """Every leaf task's units (its items, or its clusters' items when it names a cluster key) in
    document order, and whether they are clusters."""
    from lm_eval.tasks import get_task_dict

    units = {}
    for task, obj in sorted(_leaves(get_task_dict(list(cfg.eval.tasks), manager))):
        docs = list(obj.eval_docs)[:cfg.eval.limit or None]
        metadata = obj.config.metadata if isinstance(obj.config.metadata, dict) else {}
        key = cfg.eval.cluster_keys.get(task) or metadata.get("cluster_key")
        groups: dict[str, list[int]] = {}
        for doc_id, doc in enumerate(docs):
            groups.setdefault(document_cluster(doc, key, task) if key else str(doc_id), []).append(doc_id)
        units[task] = (list(groups.values()), bool(key))
    if not units:
        raise InputError(f"eval.tasks={list(cfg.eval.tasks)} has no leaf task with documents")
    return units


def plan_tasks(cfg: RunConfig, manager, only: dict[str, list[int]] | None = None) -> dict[str, TaskPlan]:
    """Every leaf task's units in an order drawn from eval.seed; with `only`, the units of its
    documents alone (in the same order), and only its tasks."""
    plans = {}
    for task, (units, clustered) in task_units(cfg, manager).items():
        rng = np.random.default_rng(int(stable_hash({"seed": cfg.eval.seed, "task": task}), 16))
        ordered = [units[i] for i in rng.permutation(len(units))]
        if only is not None:
            allowed = set(only.get(task, ()))
            ordered = [unit for unit in ordered if unit[0] in allowed]
        if ordered or only is None:
            plans[task] = TaskPlan(task, ordered, clustered=clustered)
    if not plans:
        raise InputError(f"eval.tasks={list(cfg.eval.tasks)} has no leaf task with documents")
    return plans


def _leaves(task_dict: dict) -> list[tuple[str, Any]]:
    leaves = []
    for name, value in task_dict.items():
        leaves += _leaves(value) if isinstance(value, dict) else [(str(name), value)]
    return leaves


def _monitor(cfg: RunConfig, task: str, meta: dict) -> TaskMonitor:
    monitor = TaskMonitor(cfg, meta["output_type"])
    if task in cfg.gate.per_task:
        monitor.set_tolerance(cfg.gate.per_task[task].max_drop)
    return monitor


def _stop(plans: dict[str, TaskPlan], monitors: dict[str, TaskMonitor], active: list[str]) -> None:
    """A blocking FAIL stops every task (REJECT is settled); else each task decided or out of items stops."""
    failed = [f"{rule}[{task}]" for task in active for rule in monitors[task].blocking
              if monitors[task].status(rule) == 1]
    for task in active:
        plan, monitor = plans[task], monitors[task]
        if failed:
            plan.stop_reason = DECIDED if all(monitor.status(r) for r in monitor.blocking) else \
                f"{SETTLED}: {', '.join(failed)} FAILed"
        elif all(monitor.status(rule) for rule in monitor.blocking):
            plan.stop_reason = DECIDED
        elif plan.next_unit >= len(plan.units):
            plan.stop_reason = EXHAUSTED


def _settings(cfg: RunConfig, model: Variant, settings: dict[str, Any]) -> dict[str, Any]:
    tokenizer = load_tokenizer(Path(model.checkpoint_dir), cfg.model.trust_remote_code)
    return {**settings, "add_bos_token": effective_add_bos_token(tokenizer, cfg.eval.add_bos_token),
            "sequential": {"chunk_size": cfg.eval.chunk_size, "order_seed": cfg.eval.seed}}


def _result(cfg: RunConfig, scorer: ItemScorer, settings: dict[str, Any], suite: str, used: dict[str, list[int]],
            text: str | None, key: str, seconds: float, records: list[SequentialTask]) -> EvalResult:
    """The EvalResult of the items used, written where pipelines/fidelity.py reads it."""
    directory = scorer.directory.parent / "sequential" / key
    reference = scorer.reference_logprobs(text)
    scorer.release()
    meta, tasks, suite_hashes = scorer.task_meta(), [], {}
    for task, ids in used.items():
        cached = scorer.cached(task)
        items = [cached[d] for d in ids]
        path = write_items(items, directory / "items" / f"{task}.jsonl")
        info = meta[task]
        tasks.append(TaskResult(task=task, version=info["version"], output_type=info["output_type"],
                                metric=info["metric"], value=float(np.mean([i["score"] for i in items])), stderr=None,
                                n=len(items), items_path=str(path), cluster_key=info["cluster_key"]))
        # The suite's content hash, its version and the documents used: equal means the same items.
        suite_hashes[task] = stable_hash({"suite": suite, "version": info["version"], "doc_ids": ids})
    result = EvalResult(model=scorer.variant.name, model_hash=scorer.variant.content_hash, settings=settings,
                        settings_hash=stable_hash(settings), suite_hashes=suite_hashes, tasks=tasks,
                        reference_logprobs_path=reference, seconds=seconds, from_cache=scorer.scored == 0,
                        sequential=records)
    result = with_provenance(result, scorer.include, cfg.eval)
    save_record(result, directory / "eval_result.json")
    write_manifest(directory, {"stage": "evaluate", "sequential": True, "model": scorer.variant.name})
    log.info("sequential evaluation of %s written to %s (%d items scored now, the rest from its per-item cache)",
             scorer.variant.name, directory, scorer.scored)
    return result


def apply_to_fidelity(task_fidelity, record: SequentialTask) -> None:
    """Replace the fixed-n intervals of a TaskFidelity by the confidence sequences' bounds at the stop.

    A task that ran out of items keeps its fixed-n intervals: pipelines/fidelity.py computed them
    at final_confidence (the final look's share of alpha)."""
    task_fidelity.items_used, task_fidelity.items_available = record.items_used, record.items_available
    task_fidelity.stop_reason = record.stop_reason
    if record.stop_reason == EXHAUSTED:
        return
    method = f"{METHOD} at {1 - looks_alpha(task_fidelity.confidence):.1%} (interim looks)"
    task_fidelity.ci_low, task_fidelity.ci_high = -record.drop_high, -record.drop_low
    task_fidelity.ci_method, task_fidelity.design_effect = method, 1.0
    task_fidelity.flip_ci_low, task_fidelity.flip_ci_high, task_fidelity.flip_ci_method = \
        record.flip_low, record.flip_high, method
    if record.kl_low is not None and task_fidelity.choice_kl_mean is not None:
        task_fidelity.choice_kl_ci_low, task_fidelity.choice_kl_ci_high = record.kl_low, record.kl_high
        task_fidelity.choice_kl_ci_method = f"{method}, of KL clipped at {record.kl_clip:g} nats"
