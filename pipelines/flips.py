"""The items whose answer changed between base and variant: what a reviewer reads before trusting a flip rate.

Read by the HTML report (pipelines/report_html.py) from the per-item records both evaluations
stored (pipelines/evaluate/items.py), paired by doc_id the way pipelines/fidelity.py pairs them,
so the counts are the Fidelity record's: a score that fell is `right→wrong` (right_to_wrong),
one that rose is `wrong→right` (wrong_to_right). An answer that changed at the same score (one
wrong answer for another) is listed as `changed, same score` and counted in neither.
Exercised by `python -m pytest tests/test_report_html.py -k flips`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.fidelity import paired_items
from pipelines.records import Outcome, TaskResult

WORSE, BETTER, SAME_SCORE = "right→wrong", "wrong→right", "changed, same score"


@dataclass
class Flip:
    task: str
    doc_id: int
    direction: str
    prompt: str | None
    gold: str
    base_answer: str
    variant_answer: str


def outcome_flips(outcome: Outcome) -> list[Flip]:
    """Every changed item of every task both evaluations scored, in task then doc_id order."""
    if not (outcome.base_eval and outcome.variant_eval and outcome.fidelity):
        return []
    variant_tasks = {t.task: t for t in outcome.variant_eval.tasks}
    return [flip for base_task in outcome.base_eval.tasks if base_task.task in variant_tasks
            for flip in task_flips(base_task, variant_tasks[base_task.task])]


def task_flips(base: TaskResult, variant: TaskResult) -> list[Flip]:
    base_items, variant_items = paired_items(base, variant)
    return [_flip(base.task, b, v) for b, v in zip(base_items, variant_items)
            if b["score"] != v["score"] or b["prediction"] != v["prediction"]]


def _flip(task: str, base: dict[str, Any], variant: dict[str, Any]) -> Flip:
    change = variant["score"] - base["score"]
    direction = WORSE if change < 0 else BETTER if change > 0 else SAME_SCORE
    return Flip(task=task, doc_id=base["doc_id"], direction=direction,
                prompt=variant.get("prompt") or base.get("prompt"), gold=_choice_text(base, base["target"]),
                base_answer=answer(base), variant_answer=answer(variant))


def answer(item: dict[str, Any]) -> str:
    """Generation: the text; multiple choice: the chosen option and its log-likelihood margin over the next best."""
    loglikelihoods = item.get("choice_loglikelihoods")
    if not loglikelihoods:
        return _text(item["prediction"])
    chosen = item["prediction"]
    others = [value for index, value in enumerate(loglikelihoods) if index != chosen]
    margin = f" (margin {loglikelihoods[chosen] - max(others):.3f} nats)" if others else ""
    return _choice_text(item, chosen) + margin


def _choice_text(item: dict[str, Any], value: Any) -> str:
    choices = item.get("choices")
    if choices and isinstance(value, int) and 0 <= value < len(choices):
        return f"[{value}] {choices[value].strip()}"
    return _text(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)
