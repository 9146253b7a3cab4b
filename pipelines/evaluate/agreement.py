"""Served vs in-process agreement: the same items scored by the serving engine and by transformers.

A served score is only the model's if the endpoint computes what the checkpoint computes; BOS
handling, tokenization, dtype and kernels can all change answers silently (lm-eval #2851, #3150).
`served_agreement(cfg, variant, served_result)` scores the first serve.agreement_items items of each
task in-process (cached like any evaluation) and compares them with the served items, by doc_id:
an item agrees when prediction and score are the same (log-likelihoods within LOGLIKELIHOOD_TOL).

Exercised by: pytest tests/test_served_e2e.py tests/test_serve.py
"""

from __future__ import annotations

import dataclasses
import logging

from pipelines import evaluate
from pipelines.config import RunConfig, ServeConfig
from pipelines.evaluate.items import read_items
from pipelines.records import EvalResult, TaskAgreement, Variant

log = logging.getLogger(__name__)

# float32 served and in-process log-likelihoods agree within 1e-5 on CPU; this leaves room for kernels.
LOGLIKELIHOOD_TOL = 1e-3


def served_agreement(cfg: RunConfig, variant: Variant, served: EvalResult, role: str) -> list[TaskAgreement]:
    """Per-task agreement of `served` with an in-process run on the first serve.agreement_items items."""
    count = cfg.serve.agreement_items
    if count == 0:
        return []
    limit = min(count, cfg.eval.limit) if cfg.eval.limit else count
    local_cfg = dataclasses.replace(cfg, serve=ServeConfig(name="inprocess", backend="inprocess"),
                                    eval=dataclasses.replace(cfg.eval, limit=limit, reference_text=None))
    log.info("scoring %d items per task of %s in-process to check the served scores", limit, variant.name)
    local = evaluate.run_evaluate(local_cfg, variant)
    served_tasks = {task.task: task for task in served.tasks}
    result = [compare_items(role, task.task, read_items(served_tasks[task.task].items_path),
                            read_items(task.items_path))
              for task in local.tasks if task.task in served_tasks]
    for agreement in result:
        log.info("served vs in-process %s/%s: %d of %d items agree", role, agreement.task, agreement.agreeing,
                 agreement.n)
    return result


def compare_items(model: str, task: str, served: list[dict], local: list[dict]) -> TaskAgreement:
    by_doc = {item["doc_id"]: item for item in served}
    pairs = [(by_doc[item["doc_id"]], item) for item in local if item["doc_id"] in by_doc]
    agreeing = sum(items_agree(a, b) for a, b in pairs)
    diffs = [d for a, b in pairs for d in loglikelihood_diffs(a, b)]
    return TaskAgreement(model=model, task=task, n=len(pairs), agreeing=agreeing,
                         agreement=agreeing / len(pairs) if pairs else float("nan"),
                         max_loglikelihood_diff=max(diffs) if diffs else None)


def items_agree(served: dict, local: dict) -> bool:
    if served["score"] != local["score"]:
        return False
    if served["choice_loglikelihoods"] is not None:  # multiple choice: the same choice wins
        return served["prediction"] == local["prediction"]
    a, b = served["prediction"], local["prediction"]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2:  # loglikelihood: [ll, is_greedy]
        return abs(float(a[0]) - float(b[0])) <= LOGLIKELIHOOD_TOL and bool(a[1]) == bool(b[1])
    return a == b


def loglikelihood_diffs(served: dict, local: dict) -> list[float]:
    if served["choice_loglikelihoods"] is not None and local["choice_loglikelihoods"] is not None:
        return [abs(a - b) for a, b in zip(served["choice_loglikelihoods"], local["choice_loglikelihoods"])]
    a, b = served["prediction"], local["prediction"]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2:
        return [abs(float(a[0]) - float(b[0]))]
    return []
