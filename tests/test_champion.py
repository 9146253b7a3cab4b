"""The champion policy: hand-worked rankings, ties, the alias holder, and no dependence on job order.

python -m pytest tests/test_champion.py -q
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from pipelines.champion import choose, contender, measured_cost, rank
from pipelines.config import GateConfig
from pipelines.errors import ConfigError
from pipelines.records import Contender, RatioInterval

from conftest import make_outcome


def promoted(tmp_path, name: str, usd: float | None, size: int, delta: float, decision: str = "PROMOTE",
             saving: tuple[float, float, float] | None = None):
    """A PROMOTEd (by default) outcome; `saving` (low, estimate, high): a paired cost saving vs base."""
    outcome = make_outcome(tmp_path, name, decision=decision)
    outcome.variant = replace(outcome.variant, size_bytes=size)
    outcome.fidelity.tasks = [replace(outcome.fidelity.tasks[0], delta=delta)]
    if usd is None:
        outcome.cost = None
    else:
        outcome.cost.measured = replace(outcome.cost.measured, usd_per_million_output_tokens=usd)
        outcome.cost.saving_vs_base = saving and RatioInterval(saving[1], saving[0], saving[2], 0.95, 5, "t")
    return outcome


@pytest.fixture
def sweep(tmp_path):
    """gptq is cheapest; awq as cheap but larger; w8a8 smallest; fp8 most faithful; w2 REJECTed and cheapest."""
    return [promoted(tmp_path, "gptq", 0.50, 200, -0.010), promoted(tmp_path, "awq", 0.50, 300, -0.001),
            promoted(tmp_path, "w8a8", 0.70, 100, -0.005), promoted(tmp_path, "fp8", 0.90, 400, +0.002),
            promoted(tmp_path, "w2", 0.10, 50, -0.500, decision="REJECT")]


@pytest.mark.parametrize("policy, expected", [
    ("cheapest", ["gptq", "awq", "w8a8", "fp8"]),  # gptq and awq tie on cost: the smaller first
    ("smallest", ["w8a8", "gptq", "awq", "fp8"]),
    ("most_faithful", ["fp8", "awq", "w8a8", "gptq"]),
])
def test_each_policy_ranks_the_promoted_variants_hand_worked(sweep, policy, expected):
    decision = choose(sweep, policy)
    assert [c.variant for c in decision.ranking] == expected
    assert (decision.champion, decision.runner_up) == (expected[0], expected[1])
    assert decision.previous_holder is None and not decision.kept


def test_the_champion_does_not_depend_on_the_order_jobs_finished_in(sweep):
    for policy in ("cheapest", "smallest", "most_faithful"):
        rankings = {tuple(c.variant for c in choose(list(order), policy).ranking)
                    for order in itertools.permutations(sweep)}
        assert len(rankings) == 1


def test_exact_ties_on_every_key_are_broken_by_name(tmp_path):
    twins = [promoted(tmp_path, "b", 0.5, 100, 0.0), promoted(tmp_path, "a", 0.5, 100, 0.0)]
    assert choose(twins, "cheapest").champion == "a" and choose(twins[::-1], "cheapest").champion == "a"


def test_a_variant_without_a_cost_ranks_after_every_measured_one(tmp_path):
    unmeasured, measured = promoted(tmp_path, "a", None, 10, 0.0), promoted(tmp_path, "b", 9.0, 999, -0.1)
    assert measured_cost(unmeasured) is None
    assert [c.variant for c in rank([contender(unmeasured), contender(measured)], "cheapest")] == ["b", "a"]


def test_a_cost_measured_where_no_load_met_the_slo_is_no_price_to_rank_by(tmp_path):
    cheap_but_slow, fast = promoted(tmp_path, "gptq", 0.1, 10, 0.0), promoted(tmp_path, "w8a8", 0.2, 20, 0.0)
    cheap_but_slow.cost.measured = replace(cheap_but_slow.cost.measured, slo_met=False)
    decision = choose([cheap_but_slow, fast], "cheapest")
    assert decision.champion == "w8a8" and "gptq (no $/1M at the SLO" in decision.reason


def test_the_base_and_non_promoted_variants_never_contend(tmp_path):
    base = promoted(tmp_path, "none", 0.01, 10, 0.0)
    base.variant = replace(base.variant, backend="none")
    inconclusive = promoted(tmp_path, "fp8", 0.02, 10, 0.0, decision="INCONCLUSIVE")
    decision = choose([base, inconclusive], "cheapest")
    assert decision.champion is None and decision.ranking == [] and "no variant was PROMOTEd" in decision.reason


def test_a_holder_the_policy_prefers_keeps_the_alias(sweep):
    holder = Contender(variant="old", content_hash="hash-old", usd_per_million_output_tokens=0.2, size_bytes=500,
                       mean_delta=0.0, version="3")
    decision = choose(sweep, "cheapest", holder)
    assert decision.kept and decision.champion == "old" and decision.runner_up == "gptq"
    assert decision.previous_holder is holder and "stays ahead" in decision.reason


def test_a_better_new_variant_displaces_the_holder_and_names_it(sweep):
    holder = Contender(variant="old", content_hash="hash-old", usd_per_million_output_tokens=0.6, size_bytes=1,
                       mean_delta=0.0, version="3")
    decision = choose(sweep, "cheapest", holder)
    assert not decision.kept and decision.champion == "gptq"
    assert [c.variant for c in decision.ranking][:3] == ["gptq", "awq", "old"]
    assert "replaces old" in decision.reason and "registry version 3" in decision.reason


def test_the_holders_checkpoint_promoted_again_competes_once(sweep):
    holder = Contender(variant="gptq", content_hash="hash-gptq", usd_per_million_output_tokens=0.5, size_bytes=200,
                       mean_delta=-0.01, version="1")
    decision = choose(sweep, "cheapest", holder)
    assert [c.variant for c in decision.ranking].count("gptq") == 1 and not decision.kept
    assert decision.ranking[0].version is None  # this command's registration gets the alias


def test_cheapest_ranks_paired_savings_by_their_lower_bound_before_unpaired_costs(tmp_path):
    # A wide interval around a large saving guarantees less than a narrow one around a smaller saving;
    # the unpaired variant's low $/1M (a figure from another bench run) ranks after both.
    sure = promoted(tmp_path, "w8a8", 0.70, 100, 0.0, saving=(0.30, 0.35, 0.40))
    lucky = promoted(tmp_path, "gptq", 0.40, 100, 0.0, saving=(0.05, 0.60, 0.90))
    unpaired = promoted(tmp_path, "awq", 0.10, 100, 0.0)
    decision = choose([unpaired, lucky, sure], "cheapest")
    assert [c.variant for c in decision.ranking] == ["w8a8", "gptq", "awq"]
    assert decision.ranking[0].cost_saving_low == 0.30 and "saving vs base >= 30.0%" in decision.reason


def test_a_paired_saving_without_a_cost_at_the_slo_or_a_finite_bound_is_not_ranked_by(tmp_path):
    missed_slo = promoted(tmp_path, "gptq", 0.1, 10, 0.0, saving=(0.5, 0.6, 0.7))
    missed_slo.cost.measured = replace(missed_slo.cost.measured, slo_met=False)
    unbounded = promoted(tmp_path, "fp8", 0.2, 10, 0.0, saving=(float("-inf"), 0.6, float("inf")))
    assert contender(missed_slo).cost_saving_low is None and contender(unbounded).cost_saving_low is None
    assert choose([missed_slo, unbounded], "cheapest").champion == "fp8"  # by $/1M at the SLO, as unpaired


def test_equal_saving_bounds_fall_back_to_the_measured_cost(tmp_path):
    same = [promoted(tmp_path, "a", 0.9, 10, 0.0, saving=(0.2, 0.3, 0.4)),
            promoted(tmp_path, "b", 0.5, 10, 0.0, saving=(0.2, 0.25, 0.3))]
    assert choose(same, "cheapest").champion == "b"


def test_an_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="gate.champion_policy=cheap is unknown; choose from cheapest"):
        GateConfig(name="x", champion_policy="cheap")


class RecordingTracker:
    """Answers the alias holder per model and records every crown."""

    def __init__(self, holders: dict[str, Contender]) -> None:
        self.holders, self.crowned = holders, []

    def alias_holder(self, model: str) -> Contender | None:
        return self.holders.get(model)

    def crown(self, decision) -> None:
        self.crowned.append((decision.model, decision.champion))


def test_a_command_crowns_once_per_base_model_against_that_models_holder(tmp_path):
    from pipelines.sweep import crown_champions

    tiny = [promoted(tmp_path, "gptq", 0.5, 200, 0.0), promoted(tmp_path, "w8a8", 0.4, 300, 0.0)]
    other = promoted(tmp_path, "fp8", 0.9, 100, 0.0)
    other.model = "llama3-8b"
    holder = Contender(variant="awq", content_hash="hash-awq", usd_per_million_output_tokens=0.1, size_bytes=1,
                       mean_delta=0.0, version="7")
    tracker = RecordingTracker({"llama3-8b": holder})
    decisions = crown_champions([tiny[0], other, tiny[1]], "cheapest", tracker)
    assert tracker.crowned == [("llama3-8b", "awq"), ("tiny-llama", "w8a8")]
    assert [d.kept for d in decisions] == [True, False]
    assert [d.champion for d in crown_champions(tiny, "cheapest", None)] == ["w8a8"]  # tracking off: no alias
