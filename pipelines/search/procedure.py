"""The recipe search's decision procedure: search on one split, certify once on the other.

Candidates, cheapest predicted first, are evaluated on the search split (sequentially, by the
caller's `on_search`) until one PROMOTEs there or the budget (search.budget) is spent; the chosen
one is then gated once on the confirmation split (`on_confirmation`), whose items the search never
saw. Only that verdict is reported, so its error stays at the gate's level however many candidates
were tried. When no candidate passes the search, nothing is certified: the result is the best
candidate found (INCONCLUSIVE before REJECT, then the cheapest) with its search-split verdict, and
the command exits 1 (3 when every candidate failed to run).

Pure: the evaluation is injected, so tests/test_search_procedure.py runs it on fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipelines import exit_codes

PROMOTE, INCONCLUSIVE, REJECT, FAILED = "PROMOTE", "INCONCLUSIVE", "REJECT", "FAILED"
EVERY_CANDIDATE = "every candidate was tried"
PASSED = "a candidate PROMOTEd on the search split"


@dataclass
class Trial:
    """One candidate gated on one side of the split."""

    candidate: str
    split: str  # "search" or "confirmation"
    decision: str  # PROMOTE / INCONCLUSIVE / REJECT, or FAILED when a stage failed
    reasons: list[str]
    items: int  # variant items scored on that side (per task, summed)
    exit_code: int
    kept: list[str] = field(default_factory=list)
    predicted_bytes: int | None = None
    predicted_cost_per_mtok: float | None = None
    measured_cost_per_mtok: float | None = None
    # The worst task's lower bound of the accuracy delta (the y of the accuracy-cost plane).
    worst_delta_low: float | None = None
    checkpoint_bytes: int | None = None
    output_dir: str | None = None


@dataclass
class SearchResult:
    trials: list[Trial]  # search-split trials, in the order they ran
    stop_reason: str
    chosen: str | None  # the candidate certified on the confirmation split (None: none passed the search)
    confirmation: Trial | None
    decision: str  # the confirmation verdict; without one, the best search trial's (never PROMOTE)
    best: str | None  # the candidate the decision is about
    exit_code: int
    # Set by the runner: search-side items an exhaustive grid would score (every candidate on the
    # whole search side), and the search's wall-clock seconds.
    grid_items: int | None = None
    seconds: float | None = None

    @property
    def search_items(self) -> int:
        """Search-side items scored across candidates (what search.budget.max_items counts)."""
        return sum(trial.items for trial in self.trials)


@dataclass
class Budget:
    max_candidates: int
    max_items: int | None = None


def run_search(candidates: list, on_search: Callable[[object], Trial], on_confirmation: Callable[[object], Trial],
               budget: Budget) -> SearchResult:
    """Evaluate `candidates` (ordered cheapest predicted first, each with a `.name`) as described above."""
    trials: list[Trial] = []
    stop, chosen = EVERY_CANDIDATE, None
    for candidate in candidates:
        if spent := _spent(trials, budget):
            stop = spent
            break
        trials.append(on_search(candidate))
        if trials[-1].decision == PROMOTE:
            stop, chosen = PASSED, candidate
            break
    if chosen is not None:
        confirmation = on_confirmation(chosen)
        return SearchResult(trials, stop, chosen.name, confirmation, confirmation.decision, chosen.name,
                            confirmation.exit_code)
    best = best_trial(trials)
    code = exit_codes.STAGE_FAILED if best is None or best.decision == FAILED else exit_codes.VERDICT_BLOCKS
    return SearchResult(trials, stop, None, None, best.decision if best else FAILED,
                        best.candidate if best else None, code)


def _spent(trials: list[Trial], budget: Budget) -> str | None:
    """Why the budget allows no further candidate, or None."""
    if len(trials) >= budget.max_candidates:
        return f"search.budget.max_candidates={budget.max_candidates} reached"
    items = sum(trial.items for trial in trials)
    if budget.max_items is not None and items >= budget.max_items:
        return f"search.budget.max_items={budget.max_items} reached ({items} items scored)"
    return None


def best_trial(trials: list[Trial]) -> Trial | None:
    """INCONCLUSIVE before REJECT before FAILED; among equals the first tried (the cheapest predicted)."""
    rank = {PROMOTE: 0, INCONCLUSIVE: 1, REJECT: 2, FAILED: 3}
    return min(trials, key=lambda trial: rank[trial.decision], default=None)
