"""Paired fidelity statistics: did the variant change the model's behaviour, and how sure are we?

Every number compares the two models on the same items (paired by lm-eval doc_id), never two
accuracies as independent samples:
  - accuracy delta (variant - reference) with a paired bootstrap CI: scipy.stats.bootstrap over the
    per-item score differences (identical to `paired=True` on the two score vectors), method
    "percentile". Not BCa: the differences are -1/0/+1 and mostly 0, and BCa's jackknife
    acceleration degenerates (NaN, warnings) exactly when few items flip, the common case here.
  - McNemar's exact test on the discordant pairs (statsmodels), for binary metrics only;
  - flips right->wrong / wrong->right (graded metrics: items whose score fell / rose) and
    flip_rate = changed items / n;
  - multiple choice: KL(reference || variant) between the softmax-normalised choice
    log-likelihoods per item (scipy.stats.entropy), its mean and p95, and argmax agreement;
  - reference text: token-level KL(reference || variant) at every position (torch kl_div with
    log targets), mean and p95, top-1 token agreement, perplexity of each and their ratio.
Results evaluated under different settings, suite content/versions or BOS handling are refused.

Exercised by: pytest tests/test_fidelity.py
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.errors import InputError
from pipelines.evaluate.items import read_items
from pipelines.evaluate.reference import iter_window_logprobs, read_token_ids
from pipelines.records import Divergence, EvalResult, Fidelity, TaskFidelity, TaskResult

# Log-probs of tokens a model masks out are -inf; flooring them keeps 0 * (-inf) from making NaN.
LOGPROB_FLOOR = -1e4


def compare(reference: EvalResult, variant: EvalResult, confidence: float, bootstrap_samples: int, seed: int,
            reference_name: str = "base", variant_name: str | None = None) -> Fidelity:
    """Paired comparison of `variant` against `reference`, task by task, plus reference-text divergence."""
    variant_name = variant_name or variant.model
    check_comparable(reference, variant, reference_name, variant_name)
    variant_tasks = {task.task: task for task in variant.tasks}
    tasks = [compare_task(task, variant_tasks[task.task], confidence, bootstrap_samples, seed)
             for task in reference.tasks]
    divergence = None
    if reference.reference_logprobs_path and variant.reference_logprobs_path:
        divergence = reference_divergence(reference.reference_logprobs_path, variant.reference_logprobs_path)
    return Fidelity(variant=variant_name, reference=reference_name, variant_hash=variant.model_hash,
                    reference_hash=reference.model_hash, settings_hash=reference.settings_hash,
                    tasks=tasks, divergence=divergence)


def check_comparable(reference: EvalResult, variant: EvalResult, reference_name: str, variant_name: str) -> None:
    """Refuse pairs whose differences would be the setup's, not the model's (e.g. BOS, lm-eval #2676)."""
    pair = f"cannot compare {variant_name} with {reference_name}"
    keys = sorted(set(reference.settings) | set(variant.settings))
    for key in keys:
        ours, theirs = reference.settings.get(key), variant.settings.get(key)
        if ours != theirs:
            raise InputError(f"{pair}: eval setting {key} differs ({reference_name}={ours!r}, "
                             f"{variant_name}={theirs!r}); evaluate both with the same settings")
    if reference.settings_hash != variant.settings_hash:
        raise InputError(f"{pair}: settings hashes differ ({reference.settings_hash} vs {variant.settings_hash}); "
                         "re-evaluate both with overwrite=true")
    versions = {task.task: task.version for task in variant.tasks}
    for task in reference.tasks:
        if task.task not in versions:
            raise InputError(f"{pair}: task {task.task} is missing from {variant_name}'s evaluation")
        if task.version != versions[task.task]:
            raise InputError(f"{pair}: task {task.task} is version {task.version} for {reference_name} but "
                             f"{versions[task.task]} for {variant_name}; re-evaluate both on one suite version")
    if reference.suite_hashes != variant.suite_hashes:
        changed = sorted(t for t in set(reference.suite_hashes) | set(variant.suite_hashes)
                         if reference.suite_hashes.get(t) != variant.suite_hashes.get(t))
        raise InputError(f"{pair}: suite content of {', '.join(changed)} differs (data, prompts or targets); "
                         "re-evaluate both on the same suite")


def compare_task(reference: TaskResult, variant: TaskResult, confidence: float, bootstrap_samples: int,
                 seed: int) -> TaskFidelity:
    ref_items, var_items = paired_items(reference, variant)
    ref_scores = np.array([item["score"] for item in ref_items], dtype=float)
    var_scores = np.array([item["score"] for item in var_items], dtype=float)
    ci_low, ci_high = paired_bootstrap_ci(var_scores - ref_scores, confidence, bootstrap_samples, seed)
    binary = all(item["correct"] is not None for item in ref_items + var_items)
    worse, better = int(np.sum(var_scores < ref_scores)), int(np.sum(var_scores > ref_scores))
    result = TaskFidelity(
        task=reference.task, metric=reference.metric, n=len(ref_items), base_score=float(ref_scores.mean()),
        variant_score=float(var_scores.mean()), delta=float(np.mean(var_scores - ref_scores)),
        ci_low=ci_low, ci_high=ci_high, confidence=confidence,
        mcnemar_p=mcnemar_p_value(ref_scores == 1, var_scores == 1) if binary else None,
        right_to_wrong=worse, wrong_to_right=better, flip_rate=(worse + better) / len(ref_items))
    if reference.output_type == "multiple_choice":
        kl, agreement = choice_divergence([i["choice_loglikelihoods"] for i in ref_items],
                                          [i["choice_loglikelihoods"] for i in var_items])
        result.choice_kl_mean, result.choice_kl_p95 = float(np.mean(kl)), float(np.percentile(kl, 95))
        result.choice_top1_agreement = agreement
    return result


def paired_items(reference: TaskResult, variant: TaskResult) -> tuple[list[dict], list[dict]]:
    """Both item lists in the same doc_id order; refuses when they are not the same items."""
    ref_items = {item["doc_id"]: item for item in read_items(reference.items_path)}
    var_items = {item["doc_id"]: item for item in read_items(variant.items_path)}
    if ref_items.keys() != var_items.keys():
        only = sorted(ref_items.keys() ^ var_items.keys())
        raise InputError(f"task {reference.task}: the two evaluations scored different items "
                         f"({len(only)} doc_ids in only one, e.g. {only[:3]}); evaluate both with the same limit")
    if not ref_items:
        raise InputError(f"task {reference.task} has no evaluated items; check the suite's data")
    order = sorted(ref_items)
    return [ref_items[d] for d in order], [var_items[d] for d in order]


def paired_bootstrap_ci(differences: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean per-item difference; zero width when all differences agree."""
    from scipy.stats import bootstrap

    if np.ptp(differences) == 0:
        # Every resample has the same mean: the interval is that point (and scipy would only warn).
        return float(differences[0]), float(differences[0])
    result = bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", rng=np.random.default_rng(seed), batch=_batch(len(differences)))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _batch(n_items: int) -> int:
    # Resample in chunks of ~16M values: 10k resamples of a 14k-item suite would otherwise need 1 GiB.
    return max(1, (1 << 24) // n_items)


def mcnemar_p_value(reference_correct: np.ndarray, variant_correct: np.ndarray) -> float:
    """Exact McNemar p-value (binomial test on the discordant pairs)."""
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[int(np.sum(reference_correct & variant_correct)), int(np.sum(reference_correct & ~variant_correct))],
             [int(np.sum(~reference_correct & variant_correct)), int(np.sum(~reference_correct & ~variant_correct))]]
    return float(mcnemar(table, exact=True).pvalue)


def choice_divergence(reference_ll: list[list[float]], variant_ll: list[list[float]]) -> tuple[np.ndarray, float]:
    """Per-item KL(reference || variant) of the softmaxed choice log-likelihoods, and argmax agreement."""
    from scipy.special import softmax
    from scipy.stats import entropy

    kl, agree = [], []
    for ref, var in zip(reference_ll, variant_ll):
        if len(ref) != len(var):
            raise InputError(f"an item has {len(ref)} choices in one evaluation and {len(var)} in the other")
        p, q = softmax(np.asarray(ref, dtype=float)), softmax(np.asarray(var, dtype=float))
        kl.append(float(entropy(p, q)))
        agree.append(int(np.argmax(ref)) == int(np.argmax(var)))
    return np.asarray(kl), float(np.mean(agree))


def reference_divergence(reference_path: str, variant_path: str) -> Divergence:
    """Token-level KL, top-1 agreement and perplexities over the shared reference text."""
    import torch
    import torch.nn.functional as F

    token_ids = read_token_ids(reference_path)
    if not torch.equal(token_ids, read_token_ids(variant_path)):
        raise InputError("the reference texts were tokenized differently; base and variant must share a tokenizer")
    kl_values, agreements, ref_nll, var_nll = [], 0, 0.0, 0.0
    windows = zip(iter_window_logprobs(reference_path), iter_window_logprobs(variant_path), token_ids)
    for ref, var, ids in windows:
        ref, var = ref.clamp(min=LOGPROB_FLOOR), var.clamp(min=LOGPROB_FLOOR)
        kl_values.append(F.kl_div(var, ref, reduction="none", log_target=True).sum(-1).double())
        agreements += int((ref.argmax(-1) == var.argmax(-1)).sum())
        # Position t predicts token t+1; the last position has no next token in the window.
        ref_nll -= float(ref[:-1].gather(-1, ids[1:, None]).double().sum())
        var_nll -= float(var[:-1].gather(-1, ids[1:, None]).double().sum())
    kl = torch.cat(kl_values).numpy()
    predicted = token_ids.shape[0] * (token_ids.shape[1] - 1)
    base_ppl, variant_ppl = math.exp(ref_nll / predicted), math.exp(var_nll / predicted)
    return Divergence(tokens=int(kl.size), kl_mean=float(kl.mean()), kl_p95=float(np.percentile(kl, 95)),
                      top1_agreement=agreements / kl.size, base_perplexity=base_ppl,
                      variant_perplexity=variant_ppl, perplexity_ratio=variant_ppl / base_ppl)
