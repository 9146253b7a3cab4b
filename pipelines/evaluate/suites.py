"""The evaluation suites: where a config's lm-eval tasks come from, and whether they can run.

    python -m pipelines.run eval=domain                      (bundled suites: eval.include_path=embedded)
    python -m pipelines.run eval.include_path=~/suites eval.tasks=[my_task]
    python -m pipelines.run eval.include_path=null eval.tasks=[hellaswag]   (a built-in lm-eval task)

The one owner of: resolving `eval.include_path` (`embedded` is the bundled evalsuites/ package, any
other value a folder, `~` expanded); building lm-eval's TaskManager (also for plan=true's item
counts, `local_item_counts`), which indexes only the suite folder when it holds every task
(indexing lm-eval's ~15k built-in tasks takes 10-30 s on 2 cores), and the built-ins too when a
config names one; and preflight's `check_suites` (every task exists,
its YAML parses, every item renders, the reference text is there), before any model loads.
Exercised by: pytest tests/test_bad_inputs.py tests/test_evaluate.py
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipelines.config import EvalConfig
from pipelines.embedded import resolve_source
from pipelines.errors import ConfigError, InputError
from pipelines.evaluate.items import cluster_key_for, document_cluster
from pipelines.evaluate.reference import reference_text
from pipelines.registry import did_you_mean


def resolve_include_path(include_path: str | None) -> Path | None:
    """The suite folder `eval.include_path` names (None: built-in lm-eval tasks only)."""
    if include_path is None:
        return None
    path = resolve_source(include_path, "suites").resolve()
    if not path.is_dir():
        raise InputError(f"eval.include_path={include_path} is not a directory; give a folder of lm-eval task YAMLs")
    return path


def task_manager(tasks: list[str] | tuple[str, ...], include: Path | None):
    """lm-eval's task index holding every task in `tasks`, or a ConfigError naming the unknown one."""
    from lm_eval.tasks import TaskManager

    if include is not None:
        manager = suite_folder_manager(include)
        if set(tasks) <= set(manager.all_tasks):
            return manager
    manager = TaskManager(include_path=str(include) if include else None)
    check_task_names(tasks, manager.all_tasks)
    return manager


def suite_folder_manager(include: Path):
    """lm-eval's task index of the suite folder alone (no built-in tasks: indexing those takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include), include_defaults=False)


def local_item_counts(tasks: list[str] | tuple[str, ...], include: Path) -> dict[str, dict[str, int]]:
    """Per task of `tasks` the suite folder holds: items of each of its leaf tasks (lm-eval loads their files)."""
    manager = suite_folder_manager(include)
    counts = {}
    for task in [t for t in tasks if t in manager.all_tasks]:
        loaded = quietly(manager.load_task_or_group, [task])
        counts[task] = {name: len(list(leaf.eval_docs)) for name, leaf in leaf_tasks(loaded)}
    return counts


def check_task_names(tasks: list[str] | tuple[str, ...], known: list[str]) -> None:
    for task in tasks:
        if task not in known:
            # lm-eval knows thousands of tasks: name the closest few, not all of them.
            raise ConfigError("eval.tasks: " + did_you_mean("lm-eval task", task, known, listed_by="`lm_eval ls tasks`"))


def check_suites(eval_cfg: EvalConfig) -> None:
    """Every task exists, its YAML parses, every item renders, and the reference text is there."""
    reference_text(eval_cfg.reference_text)
    include = resolve_include_path(eval_cfg.include_path)
    _check_suites(tuple(eval_cfg.tasks), str(include) if include else None,
                  tuple(sorted(eval_cfg.cluster_keys.items())))


@lru_cache(maxsize=8)
def _check_suites(tasks: tuple[str, ...], include: str | None, cluster_keys: tuple = ()) -> None:
    if include:
        _check_yaml_files(Path(include))
    manager = task_manager(tasks, Path(include) if include else None)
    try:
        loaded = quietly(manager.load_task_or_group, list(tasks))
    except Exception as error:  # lm-eval and datasets raise many types; all mean "this suite cannot load"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"eval tasks {', '.join(tasks)} cannot be loaded: {reason}") from error
    leaves = dict(leaf_tasks(loaded))
    unknown = sorted(set(dict(cluster_keys)) - set(leaves))
    if unknown:
        raise ConfigError("eval.cluster_keys: " + did_you_mean("task", unknown[0], sorted(leaves)))
    for name, task in leaves.items():
        _check_items(name, task, dict(cluster_keys).get(name))


def quietly(load, *args):
    """Progress bars of `datasets` would break the one-line error a user gets on stderr."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return load(*args)
    finally:
        datasets.enable_progress_bars()


def leaf_tasks(tree: dict):
    """(name, task) of every task in lm-eval's loaded tree of groups and tasks."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaf_tasks(value)
        else:
            yield getattr(key, "group_name", key) if not isinstance(key, str) else key, value


def _check_yaml_files(root: Path) -> None:
    # lm-eval's index silently skips a YAML it cannot parse; a user should hear about it.
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(root.glob("**/*.yaml")):
        try:
            load_yaml(path, resolve_func=False)
        except Exception as error:  # yaml errors, bad include paths, cycles: all mean "fix this file"
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise InputError(f"eval suite file {path} is malformed: {reason}") from error


def _check_items(name: str, task, cluster_key: str | None = None) -> None:
    docs = list(task.eval_docs)
    cluster_key = cluster_key or cluster_key_for({"configs": {name: task.config.to_dict()}}, name, {})
    for doc in docs if cluster_key else ():
        document_cluster(doc, cluster_key, name)  # every item must name its cluster
    if not docs:
        raise InputError(f"eval task {name} has no items; check its data file and test_split")
    for index, doc in enumerate(docs):
        try:
            rendered = [task.doc_to_text(doc), task.doc_to_target(doc)]
            if task.OUTPUT_TYPE == "multiple_choice":
                rendered.append(task.doc_to_choice(doc))
        except Exception as error:  # a template or utils function failing on a row: name the row
            raise InputError(f"eval task {name}: item {index} cannot be rendered ({type(error).__name__}: "
                             f"{error}); check that row of its data file") from error
        if any(value is None or value == "" or value == [] for value in rendered):
            raise InputError(f"eval task {name}: item {index} renders an empty prompt, target or choice list")
