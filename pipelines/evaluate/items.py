"""The per-item record format: written and read only here; paired statistics are built on it.

One JSON-lines file per task (`items/<task>.jsonl` in an evaluation's cache directory), one line
per evaluated document, in lm-eval's doc order:

    doc_id                 int    lm-eval's index of the document in the task's evaluation split;
                                  base and variant items are paired on it.
    item_id                str    the document's own `id` field when it has one, else str(doc_id).
    target                 any    what lm-eval's `doc_to_target` gave (a choice index for
                                  multiple-choice tasks, the gold string for generation tasks).
    prediction             any    multiple_choice: index of the highest raw choice log-likelihood;
                                  otherwise the filtered response (the generated text after the
                                  task's first filter; a [log-likelihood, is_greedy] pair for
                                  loglikelihood tasks).
    score                  float  the task's primary metric for this item (the first entry of its
                                  `metric_list`, under its first filter).
    correct                bool   score == 1 for binary metrics (acc, acc_norm, exact_match, ...),
                                  null for graded ones.
    choice_loglikelihoods  list   multiple_choice only: one log-likelihood per choice, in choice
                                  order; null for other output types.
    cluster                str    the item's cluster (e.g. its vendor) when the task names a cluster
                                  key (`metadata.cluster_key` or eval.cluster_keys), else null;
                                  intervals then resample by cluster. Optional when reading.
    prompt                 str    the context the model was given (lm-eval's first request
                                  argument), for reviewers reading flips. Optional when reading.
    choices                list   multiple_choice only: the choice texts (continuations), in choice
                                  order; null for other output types. Optional when reading.

Exercised by: pytest tests/test_evaluate.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import InputError
from pipelines.storage import atomic_write_text

# Per-item metrics that are 0/1 by definition; only these give right/wrong flips and McNemar.
BINARY_METRICS = frozenset({"acc", "acc_norm", "acc_mutual_info", "exact_match", "pass@1"})
FIELDS = ("doc_id", "item_id", "target", "prediction", "score", "correct", "choice_loglikelihoods")
OPTIONAL_FIELDS = ("cluster", "prompt", "choices")


def primary_metric(results: dict[str, Any], task: str) -> tuple[str, str]:
    """The (metric, filter) a task is judged by: its first listed metric under its first filter."""
    samples = results["samples"][task]
    metric_list = results["configs"][task].get("metric_list") or []
    metric = metric_list[0]["metric"] if metric_list else samples[0]["metrics"][0]
    if not isinstance(metric, str):
        raise InputError(f"task {task} names its first metric by a function; give it a metric name in metric_list")
    return metric, samples[0]["filter"]


def cluster_key_for(results: dict[str, Any], task: str, configured: dict[str, str]) -> str | None:
    """The task's cluster key: eval.cluster_keys[task] if set, else the task's `metadata.cluster_key`."""
    if task in configured:
        return configured[task]
    metadata = results["configs"][task].get("metadata") or {}
    return metadata.get("cluster_key") if isinstance(metadata, dict) else None


def items_from_samples(samples: list[dict[str, Any]], metric: str, filter_name: str,
                       output_type: str, task: str, cluster_key: str | None = None) -> list[dict[str, Any]]:
    """Turn lm-eval's logged samples (`results["samples"][task]`) into per-item records."""
    return [_item(sample, metric, output_type, task, cluster_key) for sample in samples
            if sample["filter"] == filter_name]


def document_cluster(doc: Any, key: str, task: str) -> str:
    """The value at dotted path `key` (e.g. meta.vendor) of the document."""
    value = doc
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InputError(f"task {task}: cluster key '{key}' is not a field of its documents; "
                             "fix the task's metadata.cluster_key or eval.cluster_keys")
        value = value[part]
    return str(value)


def _item(sample: dict[str, Any], metric: str, output_type: str, task: str,
          cluster_key: str | None = None) -> dict[str, Any]:
    score = _score(sample.get(metric), metric, task)
    doc = sample.get("doc") or {}
    choices = None
    prediction = _plain(sample["filtered_resps"][0]) if sample["filtered_resps"] else None
    if output_type == "multiple_choice":
        # Each filtered response is (log-likelihood, is_greedy) for one choice, in choice order.
        choices = [float(loglikelihood) for loglikelihood, _ in sample["filtered_resps"]]
        prediction = max(range(len(choices)), key=choices.__getitem__)
    binary = metric in BINARY_METRICS and score in (0.0, 1.0)
    return {
        "doc_id": int(sample["doc_id"]),
        "item_id": str(doc["id"]) if isinstance(doc, dict) and "id" in doc else str(sample["doc_id"]),
        "target": _plain(sample["target"]),
        "prediction": prediction,
        "score": score,
        "correct": bool(score == 1.0) if binary else None,
        "choice_loglikelihoods": choices,
        "cluster": document_cluster(doc, cluster_key, task) if cluster_key else None,
        "prompt": _argument(sample, 0, 0),
        "choices": ([_argument(sample, index, 1) for index in range(len(choices))]
                    if choices is not None else None),
    }


def _argument(sample: dict[str, Any], request: int, position: int) -> str | None:
    """One text argument of one of the sample's requests (lm-eval logs `arguments` as a list of
    argument tuples, one per request); None where it has no such string."""
    arguments = sample.get("arguments") or []
    if request >= len(arguments) or not isinstance(arguments[request], (list, tuple)):
        return None
    value = arguments[request][position] if position < len(arguments[request]) else None
    return value if isinstance(value, str) else None


def _score(value: Any, metric: str, task: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise InputError(f"task {task}'s primary metric {metric} has no per-item number ({type(value).__name__}); "
                         "put a per-item metric (acc, exact_match, ...) first in its metric_list") from None
    if math.isnan(score):
        raise InputError(f"task {task}'s metric {metric} is NaN for an item; check the task's scoring")
    return score


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as plain JSON values (lm-eval logs np.float64 and tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def write_items(items: list[dict[str, Any]], path: Path) -> Path:
    lines = [json.dumps({name: item.get(name) for name in FIELDS + OPTIONAL_FIELDS}, ensure_ascii=False)
             for item in items]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_items(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"per-item records {path} are missing; re-run the evaluation with overwrite=true")
    with path.open() as handle:
        items = [json.loads(line) for line in handle if line.strip()]
    for item in items[:1]:
        missing = set(FIELDS) - set(item)
        if missing:
            raise InputError(f"{path} is not a per-item record file (missing {sorted(missing)}); re-run the evaluation")
    return items


def choice_divergence(reference_ll: list[list[float]], variant_ll: list[list[float]]) -> tuple[np.ndarray, float]:
    """Per-item KL(reference || variant) of the softmaxed choice log-likelihoods, and argmax agreement.

    Here, beside the record format, because the sequential monitor (pipelines/evaluate/sequential.py)
    and the fidelity stage (pipelines/fidelity.py) both compute it from the items' choice_loglikelihoods."""
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
