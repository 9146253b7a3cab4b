"""Table tests of the release gate (pipelines/gate.py) on hand-made records.

nice -n 10 python -m pytest tests/test_gate.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.stats import norm

from pipelines.config import GateConfig, SuiteTolerance
from pipelines.errors import InputError
from pipelines.exit_codes import of_verdict
from pipelines.gate import decide, drop_interval, items_to_settle
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


def bench(tps_bs1: float, knee: int | None, rounds: list[float] | None = None, pairing_id: str | None = "run1",
          variant: str = "v") -> BenchResult:
    """One batch-1 level; `rounds` are its per-round tokens/s (synthetic timings: no real speed involved)."""
    pct = Percentiles(p50=10.0, p95=12.0, p99=13.0)
    rounds = rounds or [tps_bs1 * 0.99, tps_bs1, tps_bs1 * 1.01]
    level = load_level(output_tokens_per_s=sum(rounds) / len(rounds), output_tokens_per_s_std=0.1, ttft_ms=pct,
                       itl_ms=pct, e2e_ms=pct, batch_size=knee or 1, repeat_output_tokens_per_s=rounds)
    return BenchResult(variant=variant, engine="hf", device="cpu", levels=[level], knee_batch_size=knee,
                       peak_memory_bytes=1, memory_kind="rss", checkpoint_bytes=1, pairing_id=pairing_id)


def base_bench(tps_bs1: float, knee: int | None, rounds: list[float] | None = None, pairing_id: str | None = "run1"):
    return bench(tps_bs1, knee, rounds, pairing_id, variant="base")


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


def _records(tmp_path, lost: int, gained: int, n: int = 200, clusters: int | None = None):
    """Base and variant evaluations (per-item files) where the variant loses `lost` items and gains `gained`."""
    from test_fidelity import binary_items, eval_result

    base = [i >= gained for i in range(n)]
    variant = [(i < gained) or (gained <= i < n - lost) for i in range(n)]
    records = []
    for name, correct in (("base", base), ("variant", variant)):
        items = binary_items(correct)
        for item in items if clusters else []:
            item["cluster"] = f"c{item['doc_id'] % clusters}"
        records.append(eval_result(tmp_path, name, items, cluster_key="vendor" if clusters else None))
    return records


def _fidelity_at(records, confidence: float) -> Fidelity:
    from pipelines.fidelity import compare

    return compare(*records, confidence=confidence, bootstrap_samples=2000, seed=7, variant_name="v")


@pytest.mark.parametrize("clusters", [None, 40])
def test_record_made_at_90_gated_at_95_equals_a_fresh_computation_at_95(tmp_path, clusters):
    # 4 of 200 lost, none gained: Tango's 95 % upper bound of the drop is 0.0503 > 0.05 (INCONCLUSIVE).
    records = _records(tmp_path, lost=4, gained=0, clusters=clusters)
    at_95 = policy(tolerance=SuiteTolerance(0.05))
    recomputed = decide(at_95, _fidelity_at(records, 0.90))
    fresh = decide(at_95, _fidelity_at(records, 0.95))
    for name in ("accuracy", "flip_rate"):
        ours, theirs = rule(recomputed, name), rule(fresh, name)
        assert (ours.status, ours.method) == (theirs.status, theirs.method)
        assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high), abs=1e-12)
    assert "recomputed from the counts; the record is at 90%" in rule(recomputed, "accuracy").message
    if clusters is None:
        assert rule(fresh, "accuracy").status == "INCONCLUSIVE"
        assert rule(fresh, "accuracy").high == pytest.approx(0.0503, abs=1e-4)


def test_rescaling_the_90_record_as_a_wald_interval_would_have_promoted(tmp_path):
    # The old rule: half-width x z(0.975)/z(0.95) around the midpoint gave an upper bound of
    # 0.0474 < 0.05 (PASS); the exact 95 % bound is 0.0503 (INCONCLUSIVE).
    task_90 = _fidelity_at(_records(tmp_path, lost=4, gained=0), 0.90).tasks[0]
    low, high = -task_90.ci_high, -task_90.ci_low
    wald_high = (low + high) / 2 + (high - low) / 2 * norm.ppf(0.975) / norm.ppf(0.95)
    assert wald_high == pytest.approx(0.0474, abs=1e-4)
    assert drop_interval(task_90, 0.95).high == pytest.approx(0.0503, abs=1e-4)


def test_bootstrap_interval_at_another_level_does_not_decide(tmp_path):
    graded = task(delta=-0.001, ci=(-0.004, 0.002), confidence=0.90, choice_kl=0.001)
    graded.ci_method, graded.choice_kl_ci_low, graded.choice_kl_ci_high = "studentized bootstrap", 0.0005, 0.002
    graded.choice_kl_ci_method = "studentized bootstrap"
    verdict = decide(policy(), fidelity(graded, kl=None))
    assert drop_interval(graded, 0.95) is None
    for name in ("accuracy", "kl"):
        result = rule(verdict, name)
        assert result.status == "INCONCLUSIVE" and result.low is None and result.high is None
        assert "rerun the fidelity stage at gate.confidence=0.95" in (result.message + (result.method or ""))
    assert decide(policy(confidence=0.90), fidelity(graded, kl=None)).decision == "PROMOTE"


def test_sequential_bounds_at_another_level_are_not_recomputed_from_counts():
    stopped = task(delta=0.0, ci=(-0.01, 0.01), flips=(1, 1), confidence=0.90)
    stopped.ci_method, stopped.stop_reason = "Tango score at 97.5% (final look)", "suite exhausted"
    verdict = decide(policy(), fidelity(stopped))
    assert status(verdict, "accuracy") == "INCONCLUSIVE" and status(verdict, "flip_rate") == "INCONCLUSIVE"


def test_cost_rule_skipped_without_a_knee():
    verdict = decide(policy(min_cost_saving=0.1, blocking=["accuracy", "cost"]), fidelity(task()),
                     cost=cost(5.0), base_cost=cost(10.0), bench=bench(20.0, knee=None), base_bench=base_bench(10.0, 4))
    assert status(verdict, "cost") == "SKIPPED" and verdict.decision == "PROMOTE"
    assert any("no knee" in reason for reason in verdict.reasons)


# Paired rounds of tokens/s at the knee. Clear: the variant is 1.6x the base in every round (saving 0.375)
# although the machine's load moves both 2x; noisy: ratios 0.7..1.9 round to round, mean 1.2 (saving 1/6).
CLEAR = ([100.0, 50.0, 80.0, 60.0], [160.0, 80.5, 127.0, 96.5])
NOISY = ([100.0, 50.0, 80.0, 60.0], [70.0, 95.0, 90.0, 80.0])
FAILING = ([100.0, 50.0, 80.0, 60.0], [102.0, 50.5, 82.0, 60.5])


@pytest.mark.parametrize("rounds, expected", [(CLEAR, "PASS"), (NOISY, "INCONCLUSIVE"), (FAILING, "FAIL")])
def test_strict_gate_decides_cost_on_the_paired_interval_of_the_saving(rounds, expected):
    strict = load_config_file(CONF / "strict.yaml", GateConfig)
    base_rounds, variant_rounds = rounds
    verdict = decide(strict, fidelity(task()), cost=cost(5.0), base_cost=cost(10.0),
                     bench=bench(0, 4, variant_rounds), base_bench=base_bench(0, 4, base_rounds))
    rule = next(r for r in verdict.rules if r.rule == "cost")
    logs = stats.ttest_rel(np.log(variant_rounds), np.log(base_rounds)).confidence_interval(strict.confidence)
    assert rule.status == expected and rule.blocking
    assert (rule.low, rule.high) == pytest.approx((1 - np.exp(-logs.low), 1 - np.exp(-logs.high)))
    assert rule.observed == pytest.approx(1 - 1 / stats.gmean(np.array(variant_rounds) / np.array(base_rounds)))
    if expected == "INCONCLUSIVE":
        assert rule.items_to_settle > 0 and "more rounds would settle it" in rule.message


def test_cost_rule_never_decides_on_records_from_different_bench_runs():
    verdict = decide(policy(min_cost_saving=0.1, blocking=["cost"]), fidelity(task()), cost=cost(5.0),
                     base_cost=cost(10.0), bench=bench(0, 4, CLEAR[1], pairing_id="run2"),
                     base_bench=base_bench(0, 4, CLEAR[0], pairing_id="run1"))
    rule = next(r for r in verdict.rules if r.rule == "cost")
    assert rule.status == "INCONCLUSIVE" and "not timed in one paired bench run" in rule.message
    assert verdict.decision == "INCONCLUSIVE"


def test_throughput_rule_compares_batch_one_on_its_paired_interval():
    verdict = decide(policy(min_throughput_gain=0.5, blocking=["throughput"]), fidelity(task()),
                     bench=bench(14.0, 1), base_bench=base_bench(10.0, 1))
    rule = next(r for r in verdict.rules if r.rule == "throughput")
    assert rule.scope == "bs1" and rule.observed == pytest.approx(0.4) and verdict.decision == "REJECT"
    assert rule.high < 0.5


@pytest.mark.parametrize("decision, inconclusive_blocks, code", [
    ("PROMOTE", True, 0), ("REJECT", False, 1), ("INCONCLUSIVE", True, 1), ("INCONCLUSIVE", False, 0)])
def test_exit_code(decision, inconclusive_blocks, code):
    verdict = decide(policy(), fidelity(task()))
    verdict.decision = decision
    assert of_verdict(verdict, policy(inconclusive_blocks=inconclusive_blocks)) == code


def test_an_unverified_endpoint_holds_the_verdict_at_inconclusive():
    evidence = fidelity(task())
    assert decide(policy(), evidence).decision == "PROMOTE"
    evidence.unverified_endpoints = {"variant": "endpoint http://h/v1 reports no root"}
    verdict = decide(policy(blocking=["accuracy"]), evidence)  # blocking whatever the policy lists
    assert verdict.decision == "INCONCLUSIVE"
    assert verdict.reasons == ["blocking identity[variant] INCONCLUSIVE: served checkpoint not verified: "
                               "endpoint http://h/v1 reports no root"]


def test_no_tasks_is_invalid_input():
    with pytest.raises(InputError, match="no tasks"):
        decide(policy(), fidelity())


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_policies_pass_the_base_against_itself_on_fidelity(path):
    gate = load_config_file(path, GateConfig)
    verdict = decide(gate, fidelity(task(confidence=gate.confidence), kl=0.0))  # the pipeline's level is the gate's
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


def agreement_verdict(agreeing: int, n: int, minimum: float = 0.95, blocking: bool = True):
    from pipelines.records import TaskAgreement

    evidence = fidelity(task())
    evidence.agreement = [TaskAgreement(model="fp8", task="t", n=n, agreeing=agreeing, agreement=agreeing / n,
                                        max_loglikelihood_diff=None)]
    rules = ["accuracy", "agreement"] if blocking else ["accuracy"]
    return decide(policy(min_agreement=minimum, blocking=rules), evidence)


@pytest.mark.parametrize("agreeing, n, expected, decision", [
    (72, 72, "PASS", "PROMOTE"),       # CP lower bound 0.025^(1/72) = 0.9501 >= 0.95
    (71, 71, "INCONCLUSIVE", "INCONCLUSIVE"),  # 0.025^(1/71) = 0.9494: one item short
    (20, 20, "INCONCLUSIVE", "INCONCLUSIVE"),  # lower bound 0.832: 20 items cannot show 0.95
    (17, 20, "INCONCLUSIVE", "INCONCLUSIVE"),  # [0.621, 0.968] straddles 0.95
    (10, 20, "FAIL", "REJECT"),        # upper bound 0.728 < 0.95
    (180, 200, "FAIL", "REJECT"),      # 0.90: upper bound 0.938 < 0.95
])
def test_agreement_rule_has_three_outcomes_from_its_clopper_pearson_interval(agreeing, n, expected, decision):
    verdict = agreement_verdict(agreeing, n)
    result = rule(verdict, "agreement")
    exact = stats.binomtest(agreeing, n).proportion_ci(0.95, method="exact")
    assert (result.status, verdict.decision) == (expected, decision)
    assert (result.low, result.high) == pytest.approx((exact.low, exact.high), abs=1e-9)
    assert result.method == "Clopper-Pearson" and result.scope == "fp8/t"


def test_agreement_inconclusive_names_the_items_that_settle_it():
    # 20 of 20 agreeing: 72 of 72 would clear 0.95 (0.025^(1/72) = 0.9501), so 52 more items.
    result = rule(agreement_verdict(20, 20), "agreement")
    assert 0.025 ** (1 / 72) >= 0.95 > 0.025 ** (1 / 71)
    assert result.items_to_settle == 52 and "~52 more items would settle it" in result.message


def test_non_blocking_agreement_only_warns():
    verdict = agreement_verdict(10, 20, blocking=False)
    assert verdict.decision == "PROMOTE" and any(r.startswith("warning agreement[fp8/t] FAIL") for r in verdict.reasons)


def test_the_base_against_itself_saves_exactly_nothing():
    same = bench(10.0, 4)
    verdict = decide(policy(min_cost_saving=0.1, min_throughput_gain=0.0, blocking=["cost", "throughput"]),
                     fidelity(task()), cost=cost(5.0), base_cost=cost(5.0), bench=same, base_bench=same)
    rules = {r.rule: r for r in verdict.rules}
    assert (rules["cost"].status, rules["cost"].low, rules["cost"].high) == ("FAIL", 0.0, 0.0)
    assert (rules["throughput"].status, rules["throughput"].observed) == ("PASS", 0.0)
