"""The recipe search's procedure (pipelines/search/procedure.py) on fake evaluations: which candidate
is chosen, which verdict is reported, and how a spent budget ends."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines import exit_codes
from pipelines.search.procedure import (EVERY_CANDIDATE, PASSED, Budget, Trial, best_trial, run_search)


@dataclass
class Fake:
    name: str


def fake_eval(search: dict[str, str], confirmation: dict[str, str], items: int = 100, calls: list | None = None):
    """on_search / on_confirmation returning the given decision per candidate, each spending `items`."""
    codes = {"PROMOTE": 0, "INCONCLUSIVE": 1, "REJECT": 1, "FAILED": 3}

    def make(split, decisions):
        def evaluate(candidate):
            if calls is not None:
                calls.append((split, candidate.name))
            decision = decisions[candidate.name]
            return Trial(candidate.name, split, decision, [f"{candidate.name}: {decision}"], items, codes[decision])
        return evaluate
    return make("search", search), make("confirmation", confirmation)


CANDIDATES = [Fake("fp8"), Fake("fp8-keep1"), Fake("fp8-keep2"), Fake("w8a8")]


def test_the_cheapest_candidate_passing_the_search_is_chosen_and_nothing_after_it_runs():
    calls = []
    on_search, on_confirm = fake_eval({"fp8": "REJECT", "fp8-keep1": "INCONCLUSIVE", "fp8-keep2": "PROMOTE",
                                       "w8a8": "PROMOTE"}, {"fp8-keep2": "PROMOTE"}, calls=calls)
    result = run_search(CANDIDATES, on_search, on_confirm, Budget(max_candidates=10))
    assert result.chosen == "fp8-keep2" and result.stop_reason == PASSED
    assert calls == [("search", "fp8"), ("search", "fp8-keep1"), ("search", "fp8-keep2"),
                     ("confirmation", "fp8-keep2")]
    assert result.search_items == 300


def test_the_confirmation_verdict_is_the_one_reported():
    """PROMOTE on the search split, REJECT on the held-out items: the search reports REJECT, exit 1."""
    on_search, on_confirm = fake_eval({"fp8": "PROMOTE"}, {"fp8": "REJECT"})
    result = run_search(CANDIDATES, on_search, on_confirm, Budget(max_candidates=10))
    assert (result.decision, result.exit_code) == ("REJECT", exit_codes.VERDICT_BLOCKS)
    assert result.confirmation.split == "confirmation" and result.trials[0].decision == "PROMOTE"


def test_max_candidates_ends_with_the_best_found_uncertified():
    on_search, on_confirm = fake_eval({"fp8": "REJECT", "fp8-keep1": "INCONCLUSIVE", "fp8-keep2": "PROMOTE"}, {})
    result = run_search(CANDIDATES, on_search, on_confirm, Budget(max_candidates=2))
    assert [t.candidate for t in result.trials] == ["fp8", "fp8-keep1"]
    assert result.stop_reason == "search.budget.max_candidates=2 reached"
    assert (result.chosen, result.confirmation, result.best, result.decision) == \
        (None, None, "fp8-keep1", "INCONCLUSIVE")
    assert result.exit_code == exit_codes.VERDICT_BLOCKS


def test_max_items_is_checked_before_each_candidate():
    """100 items per candidate, a 250-item budget: the third candidate starts (200 < 250), no fourth."""
    on_search, on_confirm = fake_eval(dict.fromkeys(["fp8", "fp8-keep1", "fp8-keep2", "w8a8"], "REJECT"), {})
    result = run_search(CANDIDATES, on_search, on_confirm, Budget(max_candidates=10, max_items=250))
    assert len(result.trials) == 3 and result.search_items == 300
    assert result.stop_reason == "search.budget.max_items=250 reached (300 items scored)"
    assert (result.decision, result.best, result.exit_code) == ("REJECT", "fp8", exit_codes.VERDICT_BLOCKS)


def test_every_candidate_tried_without_a_pass():
    on_search, on_confirm = fake_eval({"fp8": "REJECT", "w8a8": "REJECT"}, {})
    result = run_search([Fake("fp8"), Fake("w8a8")], on_search, on_confirm, Budget(max_candidates=10))
    assert result.stop_reason == EVERY_CANDIDATE and result.decision == "REJECT"


def test_every_candidate_failing_is_a_stage_failure():
    on_search, on_confirm = fake_eval({"fp8": "FAILED"}, {})
    result = run_search([Fake("fp8")], on_search, on_confirm, Budget(max_candidates=10))
    assert (result.decision, result.exit_code) == ("FAILED", exit_codes.STAGE_FAILED)


def test_best_prefers_inconclusive_then_the_cheapest():
    trials = [Trial(name, "search", decision, [], 1, 1) for name, decision in
              [("a", "REJECT"), ("b", "INCONCLUSIVE"), ("c", "INCONCLUSIVE"), ("d", "FAILED")]]
    assert best_trial(trials).candidate == "b"
    assert best_trial([]) is None
