"""The Pareto view of a command's variants: the values it plots per variant and the frontier over them.

Fidelity is the worst task's lower interval bound of the accuracy delta, cost the measured $/1M
output tokens (flagged when no load level met the SLO); the frontier runs over PROMOTEd and
INCONCLUSIVE variants, the base being the reference. One definition for the PNG (pipelines/report.py)
and the HTML page (pipelines/report_charts.py); `python -m pytest tests/test_report.py -k pareto`.
"""

from __future__ import annotations

from pipelines.records import Outcome


def pareto_front(costs: list[float], qualities: list[float]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher-or-equal quality,
    strictly better in one. Sorted by cost."""
    front = [i for i in range(len(costs))
             if not any(costs[j] <= costs[i] and qualities[j] >= qualities[i]
                        and (costs[j] < costs[i] or qualities[j] > qualities[i]) for j in range(len(costs)))]
    return sorted(front, key=lambda i: (costs[i], -qualities[i]))


def worst_delta_bound(outcome: Outcome) -> float | None:
    """The lowest per-task lower interval bound of the accuracy delta: the task that decides."""
    tasks = outcome.fidelity.tasks if outcome.fidelity else []
    return min(t.ci_low for t in tasks) if tasks else None


def is_base(outcome: Outcome) -> bool:
    return outcome.variant is not None and outcome.variant.backend == "none"


def frontier(outcomes: list[Outcome], x_of, y_of=worst_delta_bound) -> list[Outcome]:
    """The Pareto frontier (lower x, higher y), sorted by x, over PROMOTEd and INCONCLUSIVE variants with both values."""
    eligible = [o for o in outcomes if o.verdict and o.verdict.decision in ("PROMOTE", "INCONCLUSIVE")
                and not is_base(o) and x_of(o) is not None and y_of(o) is not None]
    return [eligible[i] for i in pareto_front([x_of(o) for o in eligible], [y_of(o) for o in eligible])]


def usd_per_million(outcome: Outcome) -> float | None:
    measured = outcome.cost.measured if outcome.cost else None
    return measured.usd_per_million_output_tokens if measured else None


def slo_not_met(outcome: Outcome) -> bool:
    return bool(outcome.cost and outcome.cost.measured and not outcome.cost.measured.slo_met)
