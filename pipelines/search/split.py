"""The search / confirmation split: every suite's items divided once, so the recipe search never
sees the items that certify its pick.

    python -m pipelines.search quant=[fp8] search.confirmation_share=0.5

Each leaf task's units (its items, or its clusters when the task names a cluster key:
pipelines/evaluate/sequential.task_units, so whole clusters go to one side) are put in an order
drawn from eval.seed and SALT, and the first ones, up to `confirmation_share` of the task's items,
form the confirmation side; the rest is the search side. Same seed and suite, same split.
The reference text (the KL rule's and the sensitivity probe's) is split too: its last windows,
`confirmation_share` of them, certify; the search and the probe see only the first ones.

Exercised by: pytest tests/test_search_split.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.config import RunConfig
from pipelines.evaluate.sequential import task_units
from pipelines.storage import stable_hash

# Mixed into the seed so that the split is not the sequential evaluation's item order (eval.seed alone).
SALT = "quantgate-search-split"


@dataclass
class TaskSplit:
    """One task's documents on each side, in document order."""

    task: str
    search: list[int]
    confirmation: list[int]


def split_units(task: str, units: list[list[int]], seed: int, confirmation_share: float) -> TaskSplit:
    """Whole units to the confirmation side in a seeded order until it holds its share of the items."""
    rng = np.random.default_rng(int(stable_hash({"seed": seed, "task": task, "salt": SALT}), 16))
    target = confirmation_share * sum(map(len, units))
    confirmation: list[int] = []
    search: list[int] = []
    for index in rng.permutation(len(units)):
        side = confirmation if len(confirmation) < target else search
        side.extend(units[index])
    return TaskSplit(task, sorted(search), sorted(confirmation))


def split_tasks(cfg: RunConfig, manager, confirmation_share: float) -> dict[str, TaskSplit]:
    """Every leaf task of cfg.eval.tasks split once (the units the sequential evaluation builds)."""
    return {task: split_units(task, units, cfg.eval.seed, confirmation_share)
            for task, (units, _clustered) in task_units(cfg, manager).items()}


@dataclass
class TextSplit:
    """The reference text's windows on each side: the search side first, the confirmation side last."""

    search: range
    confirmation: range
    # Text tokens the search side's windows hold: eval.reference_max_tokens for the sensitivity probe,
    # which then cuts exactly the search side's windows.
    search_tokens: int


def split_windows(windows: list[list[int]], confirmation_share: float, bos: bool) -> TextSplit | None:
    """The last `confirmation_share` of the reference windows certify, the rest are searched on; None
    when the text has too few windows to give each side one."""
    confirmation = round(len(windows) * confirmation_share)
    if not 0 < confirmation < len(windows):
        return None
    searched = len(windows) - confirmation
    return TextSplit(range(0, searched), range(searched, len(windows)),
                     sum(len(window) - int(bos) for window in windows[:searched]))


def side(splits: dict[str, TaskSplit], name: str) -> dict[str, list[int]]:
    """Per task, the documents of one side ("search" or "confirmation")."""
    return {task: getattr(split, name) for task, split in splits.items()}
