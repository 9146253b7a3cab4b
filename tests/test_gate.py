"""Table tests of the release gate (pipelines/gate.py) on hand-made records.

nice -n 10 python -m pytest tests/test_gate.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats
from scipy.stats import norm

from pipelines.config import GateConfig, SuiteTolerance
from pipelines.errors import InputError
from pipelines.gate import decide, drop_interval, exit_code, items_to_settle
from pipelines.records import BenchResult, CostEstimate, CostResult, Divergence, Fidelity, Percentiles, TaskFidelity

from conftest import load_config_file, load_level

CONF = Path(__file__).resolve().parents[1] / "conf" / "gate"


def task(name="qg_invoice", delta=0.0, ci=(0.0, 0.0), base=0.8, n=200, flips=(0, 0), choice_kl=None,
         confidence=0.95) -> TaskFidelity:
    return TaskFidelity(task=name, metric="acc", n=n, base_score=base, variant_score=base + delta, delta=delta,
                        ci_low=ci[0], ci_high=ci[1], confidence=confidence, mcnemar_p=1.0,
                        right_to_wrong=flips[0], wrong_to_right=flips[1], flip_rate=sum(flips) / n,
                        choice_kl_mean=choice_kl)


def fidelity(*tasks: TaskFidelity, kl: float | None = 0.001, kl_ci: tuple | None = None) -> Fidelity:
    kl_ci = kl_ci or ((kl * 0.9, kl * 1.1) if kl is not None else (None, None))
    divergence = None if kl is None else Divergence(tokens=4096, kl_mean=kl, kl_p95=kl * 3, top1_agreement=0.99,
                                                    base_perplexity=10.0, variant_perplexity=10.1,
                                                    perplexity_ratio=1.01, kl_ci_low=kl_ci[0], kl_ci_high=kl_ci[1],
                                                    kl_ci_method="studentized bootstrap", kl_blocks=128)
    return Fidelity(variant="w4", reference="base", variant_hash="v", reference_hash="b", settings_hash="s",
                    tasks=list(tasks), divergence=divergence)


def policy(**overrides) -> GateConfig:
    return GateConfig(**{"name": "test", **overrides})


def status(verdict, rule, scope=None):
    return next(r for r in verdict.rules if r.rule == rule and (scope is None or r.scope == scope)).status


def bench(tps_bs1: float, knee: int | None) -> BenchResult:
    pct = Percentiles(p50=10.0, p95=12.0, p99=13.0)
    level = load_level(output_tokens_per_s=tps_bs1, output_tokens_per_s_std=0.1, ttft_ms=pct, itl_ms=pct, e2e_ms=pct)
    return BenchResult(variant="v", engine="hf", device="cpu", levels=[level], knee_batch_size=knee,
                       peak_memory_bytes=1, memory_kind="rss", checkpoint_bytes=1)


def cost(usd: float) -> CostResult:
    measured = CostEstimate(hardware="cpu", basis="measured", price_per_hour=1.0, output_tokens_per_s=100.0,
                            usd_per_million_output_tokens=usd, replicas_for_target=1, monthly_usd=730.0)
    return CostResult(variant="v", target_qps=1.0, headroom=0.25, measured=measured, projected=[],
                      decode_roofline_fraction=None)


@pytest.mark.parametrize("case, evidence, gate, expected", [
    ("base vs itself", fidelity(task()), policy(), "PROMOTE"),
    ("clearly broken", fidelity(task(delta=-0.5, ci=(-0.6, -0.4), flips=(100, 0), choice_kl=2.0), kl=2.0),
     policy(), "REJECT"),
    ("small drop, tight CI", fidelity(task(delta=-0.005, ci=(-0.015, 0.005))), policy(), "PROMOTE"),
    ("CI straddles tolerance", fidelity(task(delta=-0.01, ci=(-0.05, 0.03))), policy(), "INCONCLUSIVE"),
    ("upper bound of drop exactly at tolerance", fidelity(task(delta=-0.01, ci=(-0.02, 0.0))), policy(),
     "INCONCLUSIVE"),
    ("lower bound of drop exactly at tolerance", fidelity(task(delta=-0.03, ci=(-0.04, -0.02))), policy(),
     "INCONCLUSIVE"),
    ("lower bound of drop just over tolerance", fidelity(task(delta=-0.03, ci=(-0.04, -0.0201))), policy(),
     "REJECT"),
    ("relative 5% of 0.8 = 0.04 tolerates a 0.035 bound",
     fidelity(task(delta=-0.02, ci=(-0.035, -0.005))), policy(tolerance=SuiteTolerance(0.05, "relative")), "PROMOTE"),
    ("same drop fails an absolute 2-point tolerance", fidelity(task(delta=-0.03, ci=(-0.035, -0.025))), policy(),
     "REJECT"),
    ("per-task override loosens one task",
     fidelity(task(delta=-0.03, ci=(-0.035, -0.025)), task("qg_policy")),
     policy(per_task={"qg_invoice": SuiteTolerance(0.05, "absolute")}), "PROMOTE"),
    ("flip rate over the limit blocks", fidelity(task(flips=(15, 15))), policy(), "REJECT"),
    ("flip rate at the limit: its interval straddles", fidelity(task(flips=(10, 10))), policy(), "INCONCLUSIVE"),
    ("flip rate whose upper bound clears the limit passes", fidelity(task(flips=(5, 5))), policy(), "PROMOTE"),
    ("reference KL whose interval straddles the limit", fidelity(task(), kl=0.045, kl_ci=(0.03, 0.06)), policy(),
     "INCONCLUSIVE"),
    ("reference KL without an interval does not decide", fidelity(task(), kl=0.001, kl_ci=(None, None)), policy(),
     "INCONCLUSIVE"),
    ("reference KL over the limit blocks", fidelity(task(), kl=0.06), policy(), "REJECT"),
    ("non-blocking KL only warns", fidelity(task(), kl=0.06), policy(blocking=["accuracy"]), "PROMOTE"),
])
def test_decision_table(case, evidence, gate, expected):
    assert decide(gate, evidence).decision == expected, case


def test_non_blocking_failure_appears_as_warning():
    verdict = decide(policy(blocking=["accuracy"]), fidelity(task(), kl=0.06))
    assert status(verdict, "kl", "reference") == "FAIL"
    assert any(r.startswith("warning kl[reference] FAIL") for r in verdict.reasons)


def test_rule_without_data_is_skipped_and_does_not_block():
    verdict = decide(policy(), fidelity(task(), kl=None))
    assert status(verdict, "kl") == "SKIPPED" and verdict.decision == "PROMOTE"


def test_every_rule_carries_its_numbers():
    verdict = decide(policy(), fidelity(task(delta=-0.01, ci=(-0.05, 0.03))))
    accuracy = next(r for r in verdict.rules if r.rule == "accuracy")
    assert (accuracy.observed, accuracy.bound, accuracy.threshold) == pytest.approx((0.01, 0.05, 0.02))
    assert accuracy.blocking and "straddles" in accuracy.message


def test_items_to_settle_hand_worked():
    # Point drop 0, CI half-width 0.04 at n=100, tolerance 0.02: half-width must halve, so 4x the
    # items (n=400), i.e. 300 more.
    assert items_to_settle(100, 0.0, -0.04, 0.04, 0.02) == 300
    verdict = decide(policy(), fidelity(task(n=100, ci=(-0.04, 0.04))))
    assert verdict.rules[0].items_to_settle == 300
    assert items_to_settle(100, 0.02, 0.0, 0.04, 0.02) is None


def test_interval_rescaled_when_policy_confidence_differs():
    # Drop CI [0.005, 0.019] at 95 % passes a 0.02 tolerance; at 99 % its half-width grows by
    # z(0.995)/z(0.975) = 2.5758/1.9600 to 0.0092 around 0.012, so the upper bound is 0.0212.
    evidence = fidelity(task(delta=-0.012, ci=(-0.019, -0.005)))
    assert decide(policy(confidence=0.95), evidence).decision == "PROMOTE"
    strict = decide(policy(confidence=0.99), evidence)
    assert strict.decision == "INCONCLUSIVE" and "rescaled from 95%" in strict.rules[0].message
    _, low, high = drop_interval(evidence.tasks[0], 0.99)
    half = 0.007 * norm.ppf(0.995) / norm.ppf(0.975)
    assert (low, high) == pytest.approx((0.012 - half, 0.012 + half)) and high == pytest.approx(0.0212, abs=1e-4)


def test_cost_rule_skipped_without_a_knee():
    verdict = decide(policy(min_cost_saving=0.1, blocking=["accuracy", "cost"]), fidelity(task()),
                     cost=cost(5.0), base_cost=cost(10.0), bench=bench(20.0, knee=None), base_bench=bench(10.0, 4))
    assert status(verdict, "cost") == "SKIPPED" and verdict.decision == "PROMOTE"
    assert any("no knee" in reason for reason in verdict.reasons)


@pytest.mark.parametrize("variant_usd, expected", [(6.0, "PROMOTE"), (9.5, "REJECT")])
def test_cost_rule_saving(variant_usd, expected):
    # Saving = 1 - variant/base: 1 - 6/10 = 0.4 >= 0.1; 1 - 9.5/10 = 0.05 < 0.1.
    verdict = decide(policy(min_cost_saving=0.1, blocking=["cost"]), fidelity(task()), cost=cost(variant_usd),
                     base_cost=cost(10.0), bench=bench(20.0, 4), base_bench=bench(10.0, 4))
    rule = next(r for r in verdict.rules if r.rule == "cost")
    assert rule.observed == pytest.approx(1 - variant_usd / 10.0) and verdict.decision == expected


def test_throughput_rule_compares_batch_one():
    verdict = decide(policy(min_throughput_gain=0.5, blocking=["throughput"]), fidelity(task()),
                     bench=bench(14.0, 4), base_bench=bench(10.0, 4))
    rule = next(r for r in verdict.rules if r.rule == "throughput")
    assert rule.scope == "bs1" and rule.observed == pytest.approx(0.4) and verdict.decision == "REJECT"


@pytest.mark.parametrize("decision, inconclusive_blocks, code", [
    ("PROMOTE", True, 0), ("REJECT", False, 1), ("INCONCLUSIVE", True, 1), ("INCONCLUSIVE", False, 0)])
def test_exit_code(decision, inconclusive_blocks, code):
    verdict = decide(policy(), fidelity(task()))
    verdict.decision = decision
    assert exit_code(verdict, policy(inconclusive_blocks=inconclusive_blocks)) == code


def test_no_tasks_is_invalid_input():
    with pytest.raises(InputError, match="no tasks"):
        decide(policy(), fidelity())


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_policies_pass_the_base_against_itself_on_fidelity(path):
    gate = load_config_file(path, GateConfig)
    verdict = decide(gate, fidelity(task(), kl=0.0))
    assert verdict.policy == gate.name
    assert all(r.status == "PASS" for r in verdict.rules if r.rule in {"accuracy", "flip_rate", "kl"})


def rule(verdict, name, scope=None):
    return next(r for r in verdict.rules if r.rule == name and (scope is None or r.scope == scope))


@pytest.mark.parametrize("flips, expected", [((20, 10), "FAIL"), ((40, 27), "INCONCLUSIVE"), ((20, 20), "PASS")])
def test_flip_rate_has_three_outcomes_from_its_clopper_pearson_interval(flips, expected):
    # 30 of 200: CP [0.104, 0.207] all above 0.10 -> FAIL. 67 of 600 (the main job's invoice
    # flips): 0.112, CP [0.087, 0.139] straddles 0.10 -> INCONCLUSIVE. 40 of 600: upper bound 0.090 -> PASS.
    n = 200 if flips == (20, 10) else 600
    verdict = decide(policy(), fidelity(task(n=n, flips=flips)))
    flip = rule(verdict, "flip_rate")
    exact = stats.binomtest(sum(flips), n).proportion_ci(0.95, method="exact")
    assert flip.status == expected
    assert (flip.low, flip.high) == pytest.approx((exact.low, exact.high), abs=1e-9)
    assert "Clopper-Pearson" in flip.message and f"{exact.low:.4g}" in flip.message and flip.method == "Clopper-Pearson"
    if expected == "INCONCLUSIVE":
        assert flip.items_to_settle and "more items would settle it" in flip.message


def test_kl_rule_has_three_outcomes_and_names_its_method():
    for ci, expected in (((0.01, 0.04), "PASS"), ((0.06, 0.08), "FAIL"), ((0.03, 0.07), "INCONCLUSIVE")):
        kl = rule(decide(policy(), fidelity(task(), kl=sum(ci) / 2, kl_ci=ci)), "kl", "reference")
        assert kl.status == expected and (kl.low, kl.high) == ci and "studentized bootstrap" in kl.message


def test_accuracy_rule_message_names_the_method_and_the_clusters():
    evidence = fidelity(task(delta=-0.01, ci=(-0.05, 0.03)))
    evidence.tasks[0].ci_method, evidence.tasks[0].cluster_key = "Tango score, clustered (design effect 2.00)", "vendor"
    evidence.tasks[0].clusters, evidence.tasks[0].design_effect = 150, 1.4
    accuracy = rule(decide(policy(), evidence), "accuracy")
    assert "Tango score" in accuracy.message and "150 clusters by vendor, design effect 1.40" in accuracy.message
    assert (accuracy.low, accuracy.high) == pytest.approx((-0.03, 0.05))


def test_rule_bounds_become_mlflow_metrics():
    from pipelines.records import Outcome
    from pipelines.track.keys import outcome_metrics

    evidence = fidelity(task(n=600, flips=(40, 27)))
    verdict = decide(policy(), evidence)
    metrics = outcome_metrics(Outcome(variant_name="fp8", model="tiny", fidelity=evidence, verdict=verdict))
    flip = rule(verdict, "flip_rate")
    assert metrics["gate/flip_rate/qg_invoice/low"] == pytest.approx(flip.low)
    assert metrics["gate/flip_rate/qg_invoice/high"] == pytest.approx(flip.high)
    assert metrics["gate/kl/reference/high"] == pytest.approx(0.0011)
