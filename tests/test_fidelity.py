"""Paired fidelity statistics checked against hand-worked cases and independent scipy/statsmodels calls.

Pure and fast: per-item files and reference log-probs are written in tmp, no model is loaded.
Run: nice -n 10 pytest tests/test_fidelity.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import rel_entr, softmax
from statsmodels.stats.contingency_tables import mcnemar

from pipelines.errors import InputError
from pipelines.evaluate.items import write_items
from pipelines.evaluate.reference import save_reference_logprobs
from pipelines.fidelity import compare, mcnemar_p_value
from pipelines.records import EvalResult, TaskResult

SETTINGS = {"runner": "hf", "tasks": ["qg_x"], "add_bos_token": True, "seed": 1234}


def binary_items(correct: list[bool]) -> list[dict]:
    return [{"doc_id": i, "item_id": str(i), "target": "a", "prediction": "a" if ok else "b", "score": float(ok),
             "correct": bool(ok), "choice_loglikelihoods": None} for i, ok in enumerate(correct)]


def choice_items(loglikelihoods: list[list[float]], targets: list[int]) -> list[dict]:
    items = []
    for i, (lls, target) in enumerate(zip(loglikelihoods, targets)):
        prediction = int(np.argmax(lls))
        items.append({"doc_id": i, "item_id": str(i), "target": target, "prediction": prediction,
                      "score": float(prediction == target), "correct": prediction == target,
                      "choice_loglikelihoods": lls})
    return items


def eval_result(tmp_path, name: str, items: list[dict], output_type: str = "generate_until",
                settings: dict | None = None, logprobs: torch.Tensor | None = None,
                token_ids: torch.Tensor | None = None, version: str = "1.0",
                cluster_key: str | None = None) -> EvalResult:
    path = write_items(items, tmp_path / name / "qg_x.jsonl")
    reference = None
    if logprobs is not None:
        reference = str(save_reference_logprobs(token_ids, logprobs, tmp_path / name / "ref.safetensors"))
    settings = settings or SETTINGS
    task = TaskResult(task="qg_x", version=version, output_type=output_type, metric="acc", value=0.0,
                      stderr=None, n=len(items), items_path=str(path), cluster_key=cluster_key)
    return EvalResult(model=name, model_hash=name, settings=settings, settings_hash=str(sorted(settings.items())),
                      suite_hashes={"qg_x": "s1"}, tasks=[task], reference_logprobs_path=reference, seconds=0.0)


def run(reference: EvalResult, variant: EvalResult, seed: int = 7):
    return compare(reference, variant, confidence=0.95, bootstrap_samples=2000, seed=seed, variant_name="v")


def test_all_agree_gives_zero_delta_but_an_interval_with_width_and_p_one(tmp_path):
    # Nothing flipped in 5 items is no evidence of a small drop: Tango's bound with no discordant
    # pair is z^2 / (n + z^2) (hand-derived: T(d) = -sqrt(n d / (1 - d)) when b = c = 0).
    correct = [True, False, True, True, False]
    same = binary_items(correct)
    task = run(eval_result(tmp_path, "a", same), eval_result(tmp_path, "b", same)).tasks[0]
    z2 = stats.norm.ppf(0.975) ** 2
    assert task.delta == 0.0 and (task.ci_low, task.ci_high) == pytest.approx((-z2 / (5 + z2), z2 / (5 + z2)))
    assert task.ci_method == "Tango score" and task.design_effect == 1.0 and task.cluster_key is None
    assert (task.right_to_wrong, task.wrong_to_right, task.flip_rate, task.mcnemar_p) == (0, 0, 0.0, 1.0)
    # Flip rate 0 of 5: Clopper-Pearson upper bound 1 - 0.025 ** (1 / 5).
    assert (task.flip_ci_low, task.flip_ci_high) == pytest.approx((0.0, 1 - 0.025 ** 0.2))


def test_all_discordant_one_way_counts_flips_and_matches_binomial(tmp_path):
    base, variant = binary_items([True] * 6), binary_items([False] * 6)
    task = run(eval_result(tmp_path, "a", base), eval_result(tmp_path, "b", variant)).tasks[0]
    assert (task.right_to_wrong, task.wrong_to_right, task.flip_rate) == (6, 0, 1.0)
    assert task.delta == -1.0 and task.ci_low == pytest.approx(-1.0, abs=1e-9) and -1.0 < task.ci_high < 0
    # Hand-worked: 6 discordant pairs all one way, exact two-sided p = 2 * 0.5**6 = 1/32.
    assert task.mcnemar_p == pytest.approx(2 * 0.5 ** 6, abs=1e-12)


def test_mcnemar_matches_statsmodels_and_exact_binomial_on_a_2x2_table(tmp_path):
    # Table [[both right 4, right->wrong 5], [wrong->right 1, both wrong 2]].
    ref = [True] * 4 + [True] * 5 + [False] * 1 + [False] * 2
    var = [True] * 4 + [False] * 5 + [True] * 1 + [False] * 2
    task = run(eval_result(tmp_path, "a", binary_items(ref)), eval_result(tmp_path, "b", binary_items(var))).tasks[0]
    assert (task.right_to_wrong, task.wrong_to_right) == (5, 1)
    assert task.flip_rate == pytest.approx(6 / 12)
    assert task.mcnemar_p == pytest.approx(stats.binomtest(1, 6, 0.5).pvalue, abs=1e-6)
    assert task.mcnemar_p == pytest.approx(mcnemar([[4, 5], [1, 2]], exact=True).pvalue, abs=1e-6)
    assert task.delta == pytest.approx((5 - 9) / 12)


def test_ties_in_both_directions_cancel_in_delta_but_count_as_flips(tmp_path):
    ref = [True, False, True, False]
    var = [False, True, True, False]
    task = run(eval_result(tmp_path, "a", binary_items(ref)), eval_result(tmp_path, "b", binary_items(var))).tasks[0]
    assert task.delta == 0.0 and task.flip_rate == 0.5
    assert task.mcnemar_p == pytest.approx(stats.binomtest(1, 2, 0.5).pvalue, abs=1e-6)
    assert task.ci_low < 0 < task.ci_high


def test_clustered_items_widen_the_interval_and_report_the_design_effect(tmp_path):
    # 40 clusters of 5 items; the variant loses whole clusters at once (perfectly clustered errors).
    ref = [True] * 200
    var = [not (cluster % 10 == 0) for cluster in range(40) for _ in range(5)]
    base_items, variant_items = binary_items(ref), binary_items(var)
    for items in (base_items, variant_items):
        for item in items:
            item["cluster"] = f"vendor-{item['doc_id'] // 5}"
    naive = run(eval_result(tmp_path, "a", binary_items(ref)), eval_result(tmp_path, "b", binary_items(var))).tasks[0]
    clustered = run(eval_result(tmp_path, "c", base_items, cluster_key="vendor"),
                    eval_result(tmp_path, "d", variant_items, cluster_key="vendor")).tasks[0]
    assert clustered.delta == naive.delta == -20 / 200
    assert (clustered.cluster_key, clustered.clusters) == ("vendor", 40)
    assert clustered.design_effect > 1.5 and naive.design_effect == 1.0
    assert clustered.ci_low < naive.ci_low and clustered.ci_high > naive.ci_high
    assert "clustered" in clustered.ci_method and clustered.flip_ci_high > naive.flip_ci_high


def test_mcnemar_p_value_helper_matches_statsmodels():
    ref = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 1], dtype=bool)
    var = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 1], dtype=bool)
    assert mcnemar_p_value(ref, var) == pytest.approx(mcnemar([[4, 3], [1, 2]], exact=True).pvalue, abs=1e-6)


def test_choice_kl_and_top1_agreement_match_scipy_entropy(tmp_path):
    ref_ll = [[-1.0, -2.0, -3.0], [-0.5, -0.7, -4.0], [-2.0, -1.0, -1.5]]
    var_ll = [[-1.2, -1.9, -3.0], [-0.9, -0.6, -4.0], [-2.0, -1.1, -1.5]]
    targets = [0, 0, 1]
    fid = run(eval_result(tmp_path, "a", choice_items(ref_ll, targets), "multiple_choice"),
              eval_result(tmp_path, "b", choice_items(var_ll, targets), "multiple_choice"))
    expected = [stats.entropy(softmax(r), softmax(v)) for r, v in zip(ref_ll, var_ll)]
    task = fid.tasks[0]
    assert task.choice_kl_mean == pytest.approx(np.mean(expected), abs=1e-6)
    assert task.choice_kl_p95 == pytest.approx(np.percentile(expected, 95), abs=1e-6)
    assert task.choice_top1_agreement == pytest.approx(2 / 3)


def reference_logprobs(seed: int, windows: int = 2, length: int = 6, vocab: int = 11) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(windows, length, vocab, generator=generator), dim=-1)


def test_reference_divergence_matches_rel_entr_and_numpy_perplexity(tmp_path):
    ids = torch.tensor([[1, 4, 2, 9, 3, 3], [1, 0, 7, 7, 5, 10]])
    ref_lp, var_lp = reference_logprobs(0), reference_logprobs(1)
    fid = run(eval_result(tmp_path, "a", binary_items([True]), logprobs=ref_lp, token_ids=ids),
              eval_result(tmp_path, "b", binary_items([True]), logprobs=var_lp, token_ids=ids))
    p, q = ref_lp.exp().double().numpy(), var_lp.exp().double().numpy()
    kl = rel_entr(p, q).sum(-1).ravel()
    nll = lambda lp: -np.mean(np.take_along_axis(lp[:, :-1].double().numpy(), ids[:, 1:, None].numpy(), -1))
    div = fid.divergence
    assert div.tokens == 12
    assert div.kl_mean == pytest.approx(kl.mean(), abs=1e-6)
    assert div.kl_p95 == pytest.approx(np.percentile(kl, 95), abs=1e-6)
    assert div.top1_agreement == pytest.approx(np.mean(p.argmax(-1) == q.argmax(-1)))
    assert div.base_perplexity == pytest.approx(np.exp(nll(ref_lp)), rel=1e-6)
    assert div.perplexity_ratio == pytest.approx(np.exp(nll(var_lp) - nll(ref_lp)), rel=1e-6)


def test_a_model_compared_with_itself_gives_exact_identities(tmp_path):
    ids = torch.tensor([[1, 4, 2, 9, 3, 3], [1, 0, 7, 7, 5, 10]])
    lp = reference_logprobs(0)
    lp[0, 0, 3] = float("-inf")  # a masked token must not turn the KL into NaN
    items = choice_items([[-1.0, -2.0], [-3.0, -0.1], [-0.4, -0.4]], [0, 0, 1])
    same = eval_result(tmp_path, "a", items, "multiple_choice", logprobs=lp, token_ids=ids)
    fid = run(same, same)
    task, div = fid.tasks[0], fid.divergence
    assert (task.delta, task.mcnemar_p) == (0.0, 1.0) and task.ci_high > 0 and task.ci_low == pytest.approx(-task.ci_high)
    assert (task.right_to_wrong, task.wrong_to_right) == (0, 0)
    # 3 items and 2 token blocks are too few units for the bootstrap: no KL interval, no decision.
    assert task.choice_kl_ci_high is None and div.kl_ci_high is None and div.kl_blocks == 2
    assert (task.choice_kl_mean, task.choice_kl_p95, task.choice_top1_agreement) == (0.0, 0.0, 1.0)
    assert (div.kl_mean, div.kl_p95, div.top1_agreement, div.perplexity_ratio) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("setting", ["add_bos_token", "seed"])
def test_refuses_results_evaluated_with_different_settings_naming_the_setting(tmp_path, setting):
    changed = {**SETTINGS, setting: {"add_bos_token": False, "seed": 1}[setting]}
    base = eval_result(tmp_path, "a", binary_items([True, False]))
    variant = eval_result(tmp_path, "b", binary_items([True, False]), settings=changed)
    with pytest.raises(InputError, match=f"eval setting {setting} differs"):
        run(base, variant)


def test_refuses_different_task_versions_and_different_items(tmp_path):
    base = eval_result(tmp_path, "a", binary_items([True, False]))
    with pytest.raises(InputError, match="version 1.0 .* but 2.0"):
        run(base, eval_result(tmp_path, "b", binary_items([True, False]), version="2.0"))
    with pytest.raises(InputError, match="scored different items"):
        run(base, eval_result(tmp_path, "c", binary_items([True, False, True])))
