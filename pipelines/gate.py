"""The release gate: one pure function from (policy, evidence) to PROMOTE / REJECT / INCONCLUSIVE.

`python -m pytest tests/test_gate.py` table-tests it; `python -m pipelines.run gate=strict` uses it.

Rules (each yields a `RuleResult` with observed value, bound, threshold and a message):
- accuracy (per task, non-inferiority): drop = -delta (scores are higher-is-better), tolerance
  absolute (points) or relative (x base score), per-task overrides. PASS when the upper bound of
  the drop (-ci_low) < tolerance, FAIL when the lower bound (-ci_high) > tolerance, otherwise
  INCONCLUSIVE. Both comparisons are strict: a bound exactly at the tolerance (within 1e-12) does
  not decide. The pipeline computes Fidelity at policy.confidence. A record made at another level
  (an older run, an engine comparison) is never rescaled: Tango and Clopper-Pearson intervals are
  recomputed exactly from its counts (clustered ones with its stored design effect) and the message
  says so; a bootstrap interval (graded metrics, KL) or a sequential run's bounds cannot be, so that
  rule is INCONCLUSIVE and says to rerun the fidelity stage at the gate's level.
- flip_rate (per task): a Clopper-Pearson interval of the rate (clustered when the task has
  clusters) against max_flip_rate: PASS when its upper bound <= the ceiling, FAIL when its lower
  bound > it, otherwise INCONCLUSIVE with the items that would settle it if the rate held.
- kl: reference-text mean KL (bootstrap over token blocks) and each multiple-choice task's mean
  choice KL (studentized bootstrap over items or clusters) against max_kl, the same three ways;
  a mean with too few units for its bootstrap has no interval and is INCONCLUSIVE.
  Every interval is two-sided at gate.confidence, so each one-sided decision
  errs at most (1 - confidence) / 2 (benchmarks/coverage.py measures it).
- cost: saving = 1 - variant $/1M / base $/1M, both at their knee, = 1 - base / variant output
  tokens/s there (one price per hour), with the interval of that ratio over the rounds of a paired
  bench run (t interval on per-round log ratios, pipelines/ratios.py), recomputed at
  policy.confidence from the rounds the records keep (exact at any level, never rescaled).
  PASS when its low end >= min_cost_saving, FAIL when its high end < it, otherwise INCONCLUSIVE with
  ~how many more rounds would settle it (the half-width shrinking as 1/sqrt(rounds), as for items);
  an unbounded interval, or base and variant not timed in one paired run (records of different bench
  runs, one repeat), is INCONCLUSIVE: a point estimate does not decide.
- agreement (served runs, per model and task): served vs in-process per-item agreement on
  serve.agreement_items items, a proportion with a Clopper-Pearson interval, against min_agreement:
  PASS when its lower bound >= the minimum, FAIL when its upper bound < it, otherwise INCONCLUSIVE
  with the items that would settle it if the rate held (20 of 20 agreeing bounds it at 0.83 at 95 %:
  72 of 72 clear 0.95); evaluated only when the fidelity record has them.
- identity (served runs with serve.trust_endpoint=true): an endpoint not shown to serve the judged
  checkpoint is a blocking INCONCLUSIVE whatever the policy, so such a run never PROMOTEs.
- throughput: gain = variant / base output tokens/s - 1 at the smallest load level both ran
  (batch 1 by default): single-stream decode speed, which weight-only schemes are meant to raise;
  capacity at the knee is what the cost rule already judges. Its interval and three outcomes are
  the cost rule's, against min_throughput_gain.
A rule whose threshold the policy leaves unset is not evaluated; one without data is SKIPPED
with its reason and never changes the decision.
REJECT if a blocking rule FAILs, else INCONCLUSIVE if a blocking rule is INCONCLUSIVE, else
PROMOTE; non-blocking rules only add warnings to the reasons.
"""

from __future__ import annotations

import dataclasses
import math

from pipelines.config import GateConfig, SuiteTolerance
from pipelines.cost import paired_cost_saving
from pipelines.errors import InputError
from pipelines.intervals import (CLOPPER_PEARSON, TANGO, Interval, items_to_settle_paired, items_to_settle_rate,
                                 paired_counts_interval, rate_counts_interval)
from pipelines.ratios import paired, tokens_per_s_ratio
from pipelines.records import (BenchResult, CostResult, Fidelity, RatioInterval, RuleResult, TaskAgreement,
                               TaskFidelity, Verdict)

PASS, FAIL, INCONCLUSIVE, SKIPPED = "PASS", "FAIL", "INCONCLUSIVE", "SKIPPED"
PROMOTE, REJECT = "PROMOTE", "REJECT"
# Float noise (e.g. 0.05 * 0.8) must not turn "exactly at the tolerance" into a decision.
_TIE = 1e-12


def decide(policy: GateConfig, fidelity: Fidelity, cost: CostResult | None = None,
           base_cost: CostResult | None = None, bench: BenchResult | None = None,
           base_bench: BenchResult | None = None) -> Verdict:
    """Apply every rule of `policy` to the evidence and combine them into a verdict."""
    if not fidelity.tasks:
        raise InputError(f"fidelity for variant '{fidelity.variant}' has no tasks: nothing to gate on; "
                         "check eval.tasks")
    rules = [accuracy_rule(policy, task) for task in fidelity.tasks]
    if policy.max_flip_rate is not None:
        rules += flip_rate_rules(policy, fidelity)
    if policy.max_kl is not None:
        rules += kl_rules(policy, fidelity)
    if policy.min_cost_saving is not None:
        rules.append(cost_rule(policy, cost, base_cost, bench, base_bench))
    if policy.min_throughput_gain is not None:
        rules.append(throughput_rule(policy, bench, base_bench))
    if policy.min_agreement is not None:
        rules += [agreement_rule(policy, agreement) for agreement in fidelity.agreement]
    for rule in rules:
        rule.blocking = rule.rule in policy.blocking
    rules += [identity_rule(role, why) for role, why in fidelity.unverified_endpoints.items()]
    return Verdict(variant=fidelity.variant, decision=_combine(rules), rules=rules,
                   reasons=_reasons(rules), policy=policy.name)


def identity_rule(role: str, why: str) -> RuleResult:
    """Scores from an endpoint not shown to serve the judged checkpoint (serve.trust_endpoint=true):
    blocking whatever the policy says, so the verdict is at most INCONCLUSIVE."""
    rule = _rule("identity", role, INCONCLUSIVE, None, None, None, f"served checkpoint not verified: {why}")
    rule.blocking = True
    return rule


def tolerance_for(policy: GateConfig, task: TaskFidelity) -> float:
    """The largest acceptable drop for `task`, in the metric's own units."""
    tol: SuiteTolerance = policy.per_task.get(task.task, policy.tolerance)
    return tol.max_drop * task.base_score if tol.kind == "relative" else tol.max_drop


def drop_interval(task: TaskFidelity, confidence: float) -> Interval | None:
    """The accuracy drop's interval at `confidence`; None when the record cannot give it.

    A record made at another level is recomputed from its counts, never rescaled: Tango's interval
    from (right->wrong, wrong->right, n) and, with clusters, their stored design effect. A bootstrap
    interval needs the per-item records and a sequential one its looks, so those give None."""
    if math.isclose(confidence, task.confidence) or _no_interval_at_any_level(task.ci_method):
        return Interval(-task.ci_high, -task.ci_low, task.ci_method or "interval")
    if not _counts_recompute(task, task.ci_method, TANGO, task.delta_variance_ratio):
        return None
    delta = paired_counts_interval(task.right_to_wrong, task.wrong_to_right, task.n, confidence,
                                   task.delta_variance_ratio or 1.0, task.clusters if task.cluster_key else None)
    return Interval(-delta.high, -delta.low, delta.method)


def _no_interval_at_any_level(method: str | None) -> bool:
    return bool(method) and "fewer than" in method  # too few units or clusters for the method


def _counts_recompute(task: TaskFidelity, method: str | None, family: str, variance_ratio: float | None) -> bool:
    """Whether an interval of `family` can be recomputed exactly from the record's counts."""
    sequential = task.stop_reason is not None  # its bounds come from confidence sequences, not the counts
    clustered_unknown = task.cluster_key is not None and variance_ratio is None  # an older record
    return bool(method) and method.startswith(family) and not sequential and not clustered_unknown


def _level(policy: GateConfig, made_at: float) -> str:
    same = math.isclose(policy.confidence, made_at)
    return f"{policy.confidence:.0%}" + ("" if same else
                                        f" (recomputed from the counts; the record is at {made_at:.0%})")


def _foreign_level(made_at: float, method: str | None, policy: GateConfig) -> str:
    return (f"the record's {method or 'interval'} is at {made_at:.0%} and the gate asks {policy.confidence:.0%}: "
            "such an interval is not rescaled; rerun the fidelity stage at "
            f"gate.confidence={policy.confidence:g} (it recomputes it from the per-item records)")


def accuracy_rule(policy: GateConfig, task: TaskFidelity) -> RuleResult:
    tolerance = tolerance_for(policy, task)
    point, drop = -task.delta, drop_interval(task, policy.confidence)
    if drop is None:
        return _rule("accuracy", task.task, INCONCLUSIVE, point, None, tolerance,
                     _foreign_level(task.confidence, task.ci_method, policy), method=task.ci_method)
    low, high, method = drop.low, drop.high, drop.method
    interval = (f"drop {point:+.4f}, {_level(policy, task.confidence)} {method} CI [{low:+.4f}, {high:+.4f}] "
                f"vs tolerance {tolerance:.4f}"
                + (f"; {task.clusters} clusters by {task.cluster_key}, design effect {task.design_effect:.2f}"
                   if task.cluster_key else ""))
    bounds = {"low": low, "high": high, "method": method}
    if not (math.isfinite(low) and math.isfinite(high)):  # too few units or clusters for the method
        return _rule("accuracy", task.task, INCONCLUSIVE, point, None, tolerance,
                     f"no usable interval ({method}): {task.n} items", low=None, high=None, method=method)
    if high < tolerance - _TIE:
        return _rule("accuracy", task.task, PASS, point, high, tolerance, f"non-inferior: {interval}", **bounds)
    if low > tolerance + _TIE:
        return _rule("accuracy", task.task, FAIL, point, low, tolerance, f"worse than tolerated: {interval}",
                     **bounds)
    more = items_to_settle_paired(task.right_to_wrong, task.wrong_to_right, task.n, tolerance, policy.confidence) \
        if task.ci_method.startswith(TANGO) else items_to_settle(task.n, point, low, high, tolerance)
    hint = f"~{more} more paired items would settle it" if more is not None else "point estimate sits at the tolerance"
    return _rule("accuracy", task.task, INCONCLUSIVE, point, high, tolerance,
                 f"interval straddles the tolerance: {interval}; {hint}", items_to_settle=more, **bounds)


def items_to_settle(n: int, point: float, low: float, high: float, tolerance: float) -> int | None:
    """Extra paired items so the interval clears the tolerance, if the point estimate held.

    Approximation: the half-width on the side facing the tolerance shrinks as sqrt(n / n_needed)
    (the standard error of a paired mean), so n_needed = n * (half / gap)^2 with gap the distance
    from the point estimate to the tolerance. None when the point estimate is at the tolerance.
    """
    gap = abs(tolerance - point)
    if gap <= _TIE or n <= 0:
        return None
    half = (high - point) if point < tolerance else (point - low)
    return max(1, math.ceil(n * (half / gap) ** 2) - n)


def flip_rate_rules(policy: GateConfig, fidelity: Fidelity) -> list[RuleResult]:
    return [flip_rate_rule(policy, task) for task in fidelity.tasks]


def flip_rate_rule(policy: GateConfig, task: TaskFidelity) -> RuleResult:
    flips = task.right_to_wrong + task.wrong_to_right
    what = f"flip rate ({task.right_to_wrong} right->wrong, {task.wrong_to_right} wrong->right of {task.n})"
    low, high, method = task.flip_ci_low, task.flip_ci_high, task.flip_ci_method
    same_level = math.isclose(policy.confidence, task.confidence)
    if _no_interval_at_any_level(method) or (same_level and low is not None and high is not None):
        pass  # the record's own interval (or none, whatever the level)
    elif _counts_recompute(task, method or CLOPPER_PEARSON, CLOPPER_PEARSON, task.flip_variance_ratio):
        # Another level, or an older record without the interval: exact from the counts.
        interval = rate_counts_interval(flips, task.n, policy.confidence, task.flip_variance_ratio or 1.0,
                                        task.clusters if task.cluster_key else None)
        low, high, method = interval.low, interval.high, interval.method
    else:
        low = high = None
        method = _foreign_level(task.confidence, method, policy)
    more = items_to_settle_rate(flips, task.n, policy.max_flip_rate, policy.confidence)
    return _bounded_limit("flip_rate", task.task, task.flip_rate, low, high, method, policy.max_flip_rate,
                          policy.confidence, what, more)


def kl_rules(policy: GateConfig, fidelity: Fidelity) -> list[RuleResult]:
    rules = []
    for t in fidelity.tasks:
        if t.choice_kl_mean is None:
            continue
        low, high, method = _bootstrap_at(policy, t.confidence, t.choice_kl_ci_low, t.choice_kl_ci_high,
                                          t.choice_kl_ci_method)
        more = items_to_settle(t.n, t.choice_kl_mean, low, high, policy.max_kl) \
            if low is not None and high is not None else None
        rules.append(_bounded_limit("kl", f"{t.task}/choices", t.choice_kl_mean, low, high, method, policy.max_kl,
                                    policy.confidence, "mean KL between choice distributions", more))
    d = fidelity.divergence
    if d is not None:
        low, high, method = _bootstrap_at(policy, fidelity.tasks[0].confidence, d.kl_ci_low, d.kl_ci_high,
                                          d.kl_ci_method)
        more = items_to_settle(d.kl_blocks or 0, d.kl_mean, low, high, policy.max_kl) \
            if low is not None and high is not None else None
        rules.append(_bounded_limit("kl", "reference", d.kl_mean, low, high, method, policy.max_kl,
                                    policy.confidence, f"mean token KL on the reference text ({d.tokens} tokens)",
                                    more, unit="token blocks"))
    return rules or [_skipped("kl", "all", "no reference-text or choice KL in the fidelity record")]


def _bootstrap_at(policy: GateConfig, made_at: float, low: float | None, high: float | None,
                  method: str) -> tuple[float | None, float | None, str]:
    """A bootstrap interval decides only at the level it was made at (rescaling it would be a guess)."""
    if math.isclose(policy.confidence, made_at) or low is None or high is None:
        return low, high, method
    return None, None, _foreign_level(made_at, method, policy)


def _bounded_limit(rule: str, scope: str, observed: float, low: float | None, high: float | None, method: str,
                   ceiling: float, confidence: float, what: str, more: int | None, unit: str = "items") -> RuleResult:
    """PASS when the upper bound <= ceiling, FAIL when the lower bound > ceiling, else INCONCLUSIVE."""
    bounds = {"low": low, "high": high, "method": method or None}
    if low is None or high is None:
        return _rule(rule, scope, INCONCLUSIVE, observed, None, ceiling,
                     f"{what}: {observed:.4g}, no interval ({method or 'not in this record'}); a point estimate "
                     "does not decide", **bounds)
    interval = f"{what}: {observed:.4g}, {confidence:.0%} {method} [{low:.4g}, {high:.4g}]"
    if high <= ceiling:
        return _rule(rule, scope, PASS, observed, high, ceiling, f"{interval} <= ceiling {ceiling:.4g}", **bounds)
    if low > ceiling:
        return _rule(rule, scope, FAIL, observed, low, ceiling, f"{interval} all above ceiling {ceiling:.4g}",
                     **bounds)
    hint = f"~{more} more {unit} would settle it" if more is not None else "the estimate sits at the ceiling"
    return _rule(rule, scope, INCONCLUSIVE, observed, high, ceiling,
                 f"{interval} straddles ceiling {ceiling:.4g}; {hint}", items_to_settle=more, **bounds)


def agreement_rule(policy: GateConfig, agreement: TaskAgreement) -> RuleResult:
    """Served vs in-process agreement, a proportion: its Clopper-Pearson interval against min_agreement."""
    scope, floor = f"{agreement.model}/{agreement.task}", policy.min_agreement
    if agreement.n <= 0:
        return _skipped("agreement", scope, "no items were scored both served and in-process")
    interval = rate_counts_interval(agreement.agreeing, agreement.n, policy.confidence)
    low, high = interval.low, interval.high
    bounds = {"low": low, "high": high, "method": interval.method}
    what = (f"served vs in-process per-item agreement: {agreement.agreeing} of {agreement.n}, "
            f"{policy.confidence:.0%} {interval.method} [{low:.4g}, {high:.4g}]")
    if low >= floor - _TIE:
        return _rule("agreement", scope, PASS, agreement.agreement, low, floor, f"{what} >= minimum {floor:.4g}",
                     **bounds)
    if high < floor - _TIE:
        return _rule("agreement", scope, FAIL, agreement.agreement, high, floor,
                     f"{what} all below minimum {floor:.4g}", **bounds)
    more = items_to_settle_rate(agreement.agreeing, agreement.n, floor, policy.confidence)
    hint = f"~{more} more items would settle it" if more is not None else "the estimate sits at the minimum"
    return _rule("agreement", scope, INCONCLUSIVE, agreement.agreement, low, floor,
                 f"{what} straddles minimum {floor:.4g}; {hint} (serve.agreement_items)", items_to_settle=more,
                 **bounds)


def cost_rule(policy: GateConfig, cost: CostResult | None, base_cost: CostResult | None,
              bench: BenchResult | None, base_bench: BenchResult | None) -> RuleResult:
    if cost is None or base_cost is None or cost.measured is None or base_cost.measured is None:
        return _skipped("cost", "usd_per_1m_tokens", "no measured cost for variant and base (bench off?)")
    for who, result in (("variant", bench), ("base", base_bench)):
        if result is not None and result.knee_batch_size is None:
            return _skipped("cost", "usd_per_1m_tokens", f"the {who} has no knee: no load level met the SLO")
    what = (f"saving in $/1M output tokens vs base ({cost.measured.usd_per_million_output_tokens:.4g} "
            f"vs {base_cost.measured.usd_per_million_output_tokens:.4g})")
    return _paired_minimum("cost", "usd_per_1m_tokens", paired_cost_saving(bench, base_bench, policy.confidence),
                           policy.min_cost_saving, what, paired(bench, base_bench))


def throughput_rule(policy: GateConfig, bench: BenchResult | None, base_bench: BenchResult | None) -> RuleResult:
    if bench is None or base_bench is None:
        return _skipped("throughput", "tokens_per_s", "no bench result for variant and base (bench off?)")
    base_levels = {level.batch_size: level for level in base_bench.levels}
    shared = sorted(level.batch_size for level in bench.levels if level.batch_size in base_levels)
    if not shared:
        return _skipped("throughput", "tokens_per_s", "variant and base share no load level")
    level = next(lv for lv in bench.levels if lv.batch_size == shared[0])
    base_level = base_levels[shared[0]]
    ratio = tokens_per_s_ratio(bench, base_bench, level, base_level, policy.confidence)
    gain = ratio and dataclasses.replace(ratio, estimate=ratio.estimate - 1, low=ratio.low - 1, high=ratio.high - 1)
    what = (f"output tokens/s gain at batch {shared[0]} ({level.output_tokens_per_s:.1f} vs "
            f"{base_level.output_tokens_per_s:.1f})")
    return _paired_minimum("throughput", f"bs{shared[0]}", gain, policy.min_throughput_gain, what,
                           paired(bench, base_bench))


def _paired_minimum(rule: str, scope: str, interval: RatioInterval | None, minimum: float, what: str,
                    is_paired: bool) -> RuleResult:
    """PASS when the interval's low end >= minimum, FAIL when its high end < minimum, else INCONCLUSIVE."""
    if interval is None:
        why = ("fewer than 2 paired rounds: set bench.repeats >= 2" if is_paired else
               "base and variant were not timed in one paired bench run")
        return _rule(rule, scope, INCONCLUSIVE, None, None, minimum, f"{what}: no interval, {why}; "
                     "a point estimate does not decide")
    bounds = {"low": interval.low, "high": interval.high, "method": interval.method}
    text = (f"{what}: {interval.estimate:+.4g}, {interval.confidence:.0%} {interval.method} "
            f"[{interval.low:+.4g}, {interval.high:+.4g}] over {interval.rounds} rounds")
    if interval.low >= minimum:
        return _rule(rule, scope, PASS, interval.estimate, interval.low, minimum, f"{text} >= {minimum:.4g}", **bounds)
    if interval.high < minimum:
        return _rule(rule, scope, FAIL, interval.estimate, interval.high, minimum, f"{text} all below {minimum:.4g}",
                     **bounds)
    more = items_to_settle(interval.rounds, interval.estimate, interval.low, interval.high, minimum) \
        if interval.bounded else None
    hint = (f"~{more} more rounds would settle it (half-width shrinking as 1/sqrt(rounds))" if more is not None
            else "no finite interval (a round measured zero tokens/s)"
            if not interval.bounded else "the estimate sits at the limit")
    return _rule(rule, scope, INCONCLUSIVE, interval.estimate, interval.low, minimum,
                 f"{text} straddles {minimum:.4g}; {hint}", items_to_settle=more, **bounds)


def _skipped(rule: str, scope: str, why: str) -> RuleResult:
    return _rule(rule, scope, SKIPPED, None, None, None, why)


def _rule(rule: str, scope: str, status: str, observed: float | None, bound: float | None,
          threshold: float | None, message: str, items_to_settle: int | None = None, low: float | None = None,
          high: float | None = None, method: str | None = None) -> RuleResult:
    # `blocking` is filled in by decide(), which knows the policy.
    return RuleResult(rule=rule, scope=scope, blocking=False, status=status, observed=observed,
                      bound=bound, threshold=threshold, message=message, items_to_settle=items_to_settle,
                      low=low, high=high, method=method)


def _combine(rules: list[RuleResult]) -> str:
    blocking = {rule.status for rule in rules if rule.blocking}
    if FAIL in blocking:
        return REJECT
    return INCONCLUSIVE if INCONCLUSIVE in blocking else PROMOTE


def _reasons(rules: list[RuleResult]) -> list[str]:
    """Every rule that did not simply pass, blocking ones first."""
    ordered = sorted((r for r in rules if r.status != PASS), key=lambda r: not r.blocking)
    return [f"{'blocking' if r.blocking else 'warning'} {r.rule}[{r.scope}] {r.status}: {r.message}"
            for r in ordered]
