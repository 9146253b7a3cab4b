"""The release decision: one champion among the PROMOTEd variants of a command, by an explicit policy.

`python -m pipelines.run -m quant=none,fp8,w8a8,gptq,awq,canary-w2 gate.champion_policy=cheapest` ranks
every PROMOTEd variant (the base, `quant=none`, is the reference and never a contender) together
with the registry alias's current holder, and the tracker moves the alias once, to the first.
A single run does the same, so a new PROMOTE never displaces a holder the policy prefers.

Policies (each a total order; the variant name and content hash break exact ties, so the choice
never depends on the order jobs finished in):
- cheapest (default): largest lower confidence bound of the paired cost saving vs base (variants with
  one first), then lowest $/1M output tokens at the SLO, then smallest checkpoint, then most faithful;
- smallest: smallest checkpoint, then cheapest, then most faithful;
- most_faithful: highest mean accuracy delta vs base, then cheapest, then smallest.
A contender without a measurement ranks after every one with it on that key.
Exercised by `python -m pytest tests/test_champion.py`.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.records import ChampionDecision, Contender, Outcome

POLICIES = ("cheapest", "smallest", "most_faithful")


def measured_cost(outcome: Outcome) -> float | None:
    """The measured $/1M output tokens at the knee. None when no load level met the SLO: that figure is
    at a load the variant cannot serve at, so it is no price to rank by."""
    measured = outcome.cost.measured if outcome.cost else None
    return measured.usd_per_million_output_tokens if measured and measured.slo_met else None


def paired_saving_low(outcome: Outcome) -> float | None:
    """The lower confidence bound of the paired cost saving vs base (CostResult.saving_vs_base); None
    without a finite one, or without a cost at the SLO (`measured_cost`)."""
    saving = outcome.cost.saving_vs_base if outcome.cost else None
    if saving is None or measured_cost(outcome) is None or not math.isfinite(saving.low):
        return None
    return saving.low


def cost_key(c: Contender) -> tuple[int, float, float]:
    """What `cheapest` ranks by, lower first: variants with a paired saving vs base by its lower bound
    (larger is cheaper: the saving the rounds guarantee at gate.confidence, so a noisy bench cannot
    win on a lucky point), then by $/1M; after them those without one, by $/1M; no $/1M at the SLO last."""
    if c.cost_saving_low is not None:
        return (0, -c.cost_saving_low, _low(c.usd_per_million_output_tokens))
    return (1, 0.0, _low(c.usd_per_million_output_tokens))


def is_contender(outcome: Outcome) -> bool:
    """A PROMOTEd quantized variant (the base judged against itself is the reference, not a release)."""
    promoted = bool(outcome.verdict and outcome.verdict.decision == "PROMOTE" and not outcome.error)
    return promoted and outcome.variant is not None and outcome.variant.backend != "none"


def contender(outcome: Outcome) -> Contender:
    fidelity = outcome.fidelity.task_mean("delta") if outcome.fidelity else None
    return Contender(variant=outcome.variant_name, content_hash=outcome.variant.content_hash,
                     usd_per_million_output_tokens=measured_cost(outcome), size_bytes=outcome.variant.size_bytes,
                     mean_delta=fidelity, cost_saving_low=paired_saving_low(outcome))


def _low(value: float | None) -> float:
    """Lower ranks first; a missing measurement ranks last."""
    return math.inf if value is None else value


def _keys(c: Contender) -> dict[str, Any]:
    return {"cost": cost_key(c), "size": _low(c.size_bytes),
            "fidelity": _low(None if c.mean_delta is None else -c.mean_delta)}


ORDER: dict[str, tuple[str, ...]] = {"cheapest": ("cost", "size", "fidelity"),
                                     "smallest": ("size", "cost", "fidelity"),
                                     "most_faithful": ("fidelity", "cost", "size")}


def rank(contenders: list[Contender], policy: str) -> list[Contender]:
    """Best first, by the policy's keys, then by name and content hash (a total order)."""
    def sort_key(contender: Contender) -> tuple:
        keys = _keys(contender)
        return (*(keys[name] for name in ORDER[policy]), contender.variant, contender.content_hash)

    return sorted(contenders, key=sort_key)


def choose(outcomes: list[Outcome], policy: str, holder: Contender | None = None) -> ChampionDecision:
    """The champion among the PROMOTEd outcomes and the alias's current `holder` (if any)."""
    model = outcomes[0].model if outcomes else ""
    contenders = [contender(o) for o in outcomes if is_contender(o)]
    if holder and holder.content_hash not in {c.content_hash for c in contenders}:
        contenders.append(holder)  # the same checkpoint promoted again competes once, as this run's
    ranking = rank(contenders, policy)
    champion = ranking[0] if ranking else None
    kept = champion is not None and champion is holder
    return ChampionDecision(model=model, policy=policy, ranking=ranking,
                            champion=champion.variant if champion else None,
                            runner_up=ranking[1].variant if len(ranking) > 1 else None,
                            previous_holder=holder, kept=kept, reason=_reason(ranking, policy, holder, kept))


def describe(c: Contender) -> str:
    cost = ("no $/1M at the SLO" if c.usd_per_million_output_tokens is None
            else f"${c.usd_per_million_output_tokens:.4g}/1M tok")
    if c.cost_saving_low is not None:
        cost += f", saving vs base >= {c.cost_saving_low:.1%}"
    size = "-" if c.size_bytes is None else f"{c.size_bytes / 2**20:.2f} MiB"
    delta = "-" if c.mean_delta is None else f"{c.mean_delta:+.4f}"
    where = f", registry version {c.version}" if c.version else ""
    return f"{c.variant} ({cost}, {size}, mean delta {delta}{where})"


def _reason(ranking: list[Contender], policy: str, holder: Contender | None, kept: bool) -> str:
    if not ranking:
        return "no variant was PROMOTEd: the alias does not move"
    order = " > ".join(ORDER[policy])
    head = f"policy {policy} ({order}): {describe(ranking[0])}"
    if kept:
        return f"{head} is the alias's holder and stays ahead of this command's PROMOTEd variants"
    runner = f"; runner-up {describe(ranking[1])}" if len(ranking) > 1 else ""
    previous = f"; replaces {describe(holder)}" if holder else "; the alias had no holder"
    return head + runner + previous
