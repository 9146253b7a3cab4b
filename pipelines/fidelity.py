"""Paired fidelity statistics: did the variant change the model's behaviour, and how sure are we?

Every number compares the two models on the same items (paired by lm-eval doc_id), never two
accuracies as independent samples:
  - accuracy delta (variant - reference) with an interval from pipelines/intervals.py: binary
    metrics Tango's paired score interval (never zero width: no flip in 50 items bounds the drop
    at 7.1 points, not 0), graded ones a studentized bootstrap of the per-item differences;
    by cluster when the task names a cluster key (design effect reported);
  - McNemar's exact test on the discordant pairs (statsmodels), for binary metrics only;
  - flips right->wrong / wrong->right (graded metrics: items whose score fell / rose) and
    flip_rate = changed items / n, with a Clopper-Pearson interval;
  - multiple choice: KL(reference || variant) between the softmax-normalised choice
    log-likelihoods per item (scipy.stats.entropy), its mean (studentized bootstrap interval),
    p95, and argmax agreement;
  - reference text: token-level KL(reference || variant) at every position (torch kl_div with
    log targets), mean (interval from a bootstrap over blocks of KL_BLOCK_TOKENS tokens: tokens
    of one window are dependent), p95, top-1 token agreement, perplexity of each and their ratio.
Results evaluated under different settings, suite content/versions or BOS handling are refused.

Exercised by: pytest tests/test_fidelity.py
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.errors import InputError
from pipelines.evaluate.items import choice_divergence, read_items
from pipelines.intervals import Interval, paired_binary_interval, rate_interval, studentized_bootstrap
from pipelines.evaluate.reference import iter_window_logprobs, read_token_ids
from pipelines.evaluate.sequential import EXHAUSTED, apply_to_fidelity, final_confidence
from pipelines.records import Divergence, EvalResult, Fidelity, TaskFidelity, TaskResult

# Log-probs of tokens a model masks out are -inf; flooring them keeps 0 * (-inf) from making NaN.
LOGPROB_FLOOR = -1e4
# Reference-text KL is resampled in blocks of this many consecutive tokens of one window: a
# token's KL depends on its neighbours', so tokens are not independent units (4096 tokens: 128 blocks).
KL_BLOCK_TOKENS = 32


def compare(reference: EvalResult, variant: EvalResult, confidence: float, bootstrap_samples: int, seed: int,
            reference_name: str = "base", variant_name: str | None = None) -> Fidelity:
    """Paired comparison of `variant` against `reference`, task by task, plus reference-text divergence."""
    variant_name = variant_name or variant.model
    check_comparable(reference, variant, reference_name, variant_name)
    variant_tasks = {task.task: task for task in variant.tasks}
    tasks = [compare_task(task, variant_tasks[task.task], confidence, bootstrap_samples, seed)
             for task in reference.tasks]
    if variant.sequential:  # a sequential run: only bounds valid under its optional stopping may decide
        tasks = _sequential_tasks(tasks, reference, variant_tasks, variant, confidence, bootstrap_samples, seed)
    divergence = None
    if reference.reference_logprobs_path and variant.reference_logprobs_path:
        divergence = reference_divergence(reference.reference_logprobs_path, variant.reference_logprobs_path,
                                          confidence, bootstrap_samples, seed)
    return Fidelity(variant=variant_name, reference=reference_name, variant_hash=variant.model_hash,
                    reference_hash=reference.model_hash, settings_hash=reference.settings_hash,
                    tasks=tasks, divergence=divergence)


def _sequential_tasks(tasks: list[TaskFidelity], reference: EvalResult, variant_tasks: dict[str, TaskResult],
                      variant: EvalResult, confidence: float, bootstrap_samples: int, seed: int) -> list[TaskFidelity]:
    """Early stops take the confidence sequences' bounds; a task that used its whole suite is decided by
    the fixed-n intervals at the final look's level (the alpha split of pipelines/evaluate/sequential.py)."""
    stops, final = {record.task: record for record in variant.sequential}, final_confidence(confidence)
    references = {task.task: task for task in reference.tasks}
    result = []
    for task in tasks:
        if stops[task.task].stop_reason == EXHAUSTED:
            task = compare_task(references[task.task], variant_tasks[task.task], final, bootstrap_samples, seed)
            task.confidence = confidence  # the whole run's level: its looks spent the rest of alpha
            for field in ("ci_method", "flip_ci_method", "choice_kl_ci_method"):
                if getattr(task, field):
                    setattr(task, field, f"{getattr(task, field)} at {final:.1%} (final look)")
        apply_to_fidelity(task, stops[task.task])
        result.append(task)
    return result


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
    clusters = item_clusters(ref_items, reference)
    binary = all(item["correct"] is not None for item in ref_items + var_items)
    if binary:
        accuracy = paired_binary_interval(ref_scores == 1, var_scores == 1, confidence, clusters)
    else:
        accuracy = graded_difference_interval(var_scores - ref_scores, ref_scores, var_scores, confidence,
                                              bootstrap_samples, seed, clusters)
    worse, better = int(np.sum(var_scores < ref_scores)), int(np.sum(var_scores > ref_scores))
    changed = (var_scores != ref_scores).astype(float)
    flips = rate_interval(worse + better, len(ref_items), confidence, changed, clusters)
    result = TaskFidelity(
        task=reference.task, metric=reference.metric, n=len(ref_items), base_score=float(ref_scores.mean()),
        variant_score=float(var_scores.mean()), delta=float(np.mean(var_scores - ref_scores)),
        ci_low=accuracy.low, ci_high=accuracy.high, confidence=confidence,
        mcnemar_p=mcnemar_p_value(ref_scores == 1, var_scores == 1) if binary else None,
        right_to_wrong=worse, wrong_to_right=better, flip_rate=(worse + better) / len(ref_items),
        ci_method=accuracy.method, cluster_key=reference.cluster_key if clusters is not None else None,
        clusters=accuracy.units if clusters is not None else None, design_effect=accuracy.design_effect,
        flip_ci_low=_finite(flips.low), flip_ci_high=_finite(flips.high), flip_ci_method=flips.method,
        delta_variance_ratio=accuracy.variance_ratio if binary else None, flip_variance_ratio=flips.variance_ratio)
    if reference.output_type == "multiple_choice":
        kl, agreement = choice_divergence([i["choice_loglikelihoods"] for i in ref_items],
                                          [i["choice_loglikelihoods"] for i in var_items])
        result.choice_kl_mean, result.choice_kl_p95 = float(np.mean(kl)), float(np.percentile(kl, 95))
        result.choice_top1_agreement = agreement
        kl_interval = studentized_bootstrap(kl, confidence, bootstrap_samples, seed, clusters)
        result.choice_kl_ci_low, result.choice_kl_ci_high = _finite(kl_interval.low), _finite(kl_interval.high)
        result.choice_kl_ci_method = kl_interval.method
    return result


def item_clusters(items: list[dict], task: TaskResult) -> np.ndarray | None:
    """Each item's cluster label, or None when the task names no cluster key."""
    labels = [item.get("cluster") for item in items]
    if task.cluster_key is None or all(label is None for label in labels):
        return None
    if any(label is None for label in labels):
        raise InputError(f"task {task.task}: some items have no cluster ({task.cluster_key}); re-run the evaluation")
    return np.asarray(labels, dtype=object).astype(str)


def graded_difference_interval(differences: np.ndarray, ref_scores: np.ndarray, var_scores: np.ndarray,
                               confidence: float, resamples: int, seed: int,
                               clusters: np.ndarray | None) -> Interval:
    """Studentized bootstrap of the mean difference; when no item changed, a bound that still has width.

    With every difference 0 the bootstrap has zero width, which is no evidence. Then the mean
    difference is at most (share of items that changed) x (score range), and the share is bounded
    by Clopper-Pearson on 0 of n changed; the range is the one observed over both models."""
    if np.ptp(differences) > 0 or differences[0] != 0:
        return studentized_bootstrap(differences, confidence, resamples, seed, clusters)
    changed = rate_interval(0, differences.size, confidence)
    spread = float(max(np.ptp(np.concatenate([ref_scores, var_scores])), 1e-12))
    return Interval(-changed.high * spread, changed.high * spread,
                    "no item changed: Clopper-Pearson bound on changed items x score range", units=differences.size)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


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


def mcnemar_p_value(reference_correct: np.ndarray, variant_correct: np.ndarray) -> float:
    """Exact McNemar p-value (binomial test on the discordant pairs)."""
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[int(np.sum(reference_correct & variant_correct)), int(np.sum(reference_correct & ~variant_correct))],
             [int(np.sum(~reference_correct & variant_correct)), int(np.sum(~reference_correct & ~variant_correct))]]
    return float(mcnemar(table, exact=True).pvalue)


def reference_divergence(reference_path: str, variant_path: str, confidence: float = 0.95,
                         resamples: int = 10000, seed: int = 0) -> Divergence:
    """Token-level KL (with a block-bootstrap interval of its mean), top-1 agreement and perplexities."""
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
    blocks = np.concatenate([np.arange(len(window)) // KL_BLOCK_TOKENS + index * 10 ** 6
                             for index, window in enumerate(kl_values)])
    interval = studentized_bootstrap(kl, confidence, resamples, seed, clusters=blocks)
    predicted = token_ids.shape[0] * (token_ids.shape[1] - 1)
    base_ppl, variant_ppl = math.exp(ref_nll / predicted), math.exp(var_nll / predicted)
    return Divergence(tokens=int(kl.size), kl_mean=float(kl.mean()), kl_p95=float(np.percentile(kl, 95)),
                      top1_agreement=agreements / kl.size, base_perplexity=base_ppl,
                      variant_perplexity=variant_ppl, perplexity_ratio=variant_ppl / base_ppl,
                      kl_ci_low=_finite(interval.low), kl_ci_high=_finite(interval.high),
                      kl_ci_method=f"{interval.method} ({KL_BLOCK_TOKENS}-token blocks)", kl_blocks=interval.units)
