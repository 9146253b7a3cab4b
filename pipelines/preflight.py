"""Checks that run before any expensive work: every input a run needs is there and usable.

Called by the CLI for every config of a command (each sweep combination) and by `run_variant`.
Each failure is a `UserError` with one line naming the bad value and the fix.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from pipelines.config import EvalConfig, ModelConfig, RunConfig
from pipelines.errors import ConfigError, InputError
from pipelines.registry import did_you_mean
from pipelines.storage import check_writable

log = logging.getLogger(__name__)


def preflight(cfg: RunConfig) -> None:
    from pipelines.plan import check_plan

    check_plan(cfg)  # fits the hardware, this machine and its disk; hub access: before anything is written
    check_writable(Path(cfg.cache_dir), "cache_dir")
    model_config = base_model_config(cfg.model)
    _check_quant(cfg, model_config)
    check_suites(cfg.eval)
    from pipelines.evaluate.sequential import check as check_sequential

    check_sequential(cfg)
    if cfg.bench.enabled:
        from pipelines.bench import check_bench

        check_bench(cfg)
    from pipelines.serve import check_serve
    from pipelines.track import check_reachable

    check_serve(cfg)
    check_reachable(cfg.tracking)


def base_model_config(model: ModelConfig) -> dict | None:
    """The base's config.json when it is local (a hub id is checked when it is fetched)."""
    from pipelines.models import is_hub_id, local_model_directory, read_model_config

    if is_hub_id(model.source):
        return None
    path = local_model_directory(model)
    config = read_model_config(path, model)
    _check_causal_lm_once(path, json.dumps(config, sort_keys=True), model.trust_remote_code)
    return config


@lru_cache(maxsize=8)
def _check_causal_lm_once(path: Path, config_json: str, trust_remote_code: bool) -> None:
    from pipelines.models import check_causal_lm

    check_causal_lm(path, json.loads(config_json), trust_remote_code)


def _check_quant(cfg: RunConfig, model_config: dict | None) -> None:
    from pipelines.quantize.calibration import load_calibration
    from pipelines.quantize.compat import check_backend, check_quant_compatible

    check_backend(cfg.quant)
    if model_config is not None:
        check_quant_compatible(model_config, cfg.quant)
    if cfg.quant.needs_calibration:
        load_calibration(cfg.quant.calibration)


def check_suites(eval_cfg: EvalConfig) -> None:
    """Every task exists, its YAML parses, every item renders, and the reference text is there."""
    from pipelines.evaluate.reference import reference_text

    reference_text(eval_cfg.reference_text)
    _check_suites(tuple(eval_cfg.tasks), suites_directory(eval_cfg.include_path),
                  tuple(sorted(eval_cfg.cluster_keys.items())))


def suites_directory(include_path: str | None) -> str | None:
    if include_path == "embedded":
        from evalsuites import SUITES_DIR

        return str(SUITES_DIR)
    if include_path is not None and not Path(include_path).is_dir():
        raise InputError(f"eval.include_path={include_path} is not a directory of lm-eval task YAMLs")
    return include_path


@lru_cache(maxsize=8)
def _check_suites(tasks: tuple[str, ...], include_path: str | None, cluster_keys: tuple = ()) -> None:
    from lm_eval.tasks import TaskManager

    if include_path:
        _check_yaml_files(Path(include_path))
    manager = TaskManager(include_path=include_path)
    for task in tasks:
        if task not in manager.all_tasks:
            local = [name for name in manager.all_tasks if name.startswith("qg_")] or manager.all_tasks
            raise ConfigError(did_you_mean("eval task", task, local, listed_by="`lm-eval ls tasks`"))
    try:
        loaded = _quietly(manager.load_task_or_group, list(tasks))
    except Exception as error:  # lm-eval and datasets raise many types; all mean "this suite cannot load"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"eval tasks {', '.join(tasks)} cannot be loaded: {reason}") from error
    leaves = dict(_leaf_tasks(loaded))
    unknown = sorted(set(dict(cluster_keys)) - set(leaves))
    if unknown:
        raise ConfigError("eval.cluster_keys: " + did_you_mean("task", unknown[0], sorted(leaves)))
    for name, task in leaves.items():
        _check_items(name, task, dict(cluster_keys).get(name))


def _quietly(load, *args):
    """Progress bars of `datasets` would break the one-line error a user gets on stderr."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return load(*args)
    finally:
        datasets.enable_progress_bars()


def _check_yaml_files(root: Path) -> None:
    # lm-eval's index silently skips a YAML it cannot parse; a user should hear about it.
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in sorted(root.glob("**/*.yaml")):
        try:
            load_yaml(path, resolve_func=False)
        except Exception as error:  # yaml errors, bad include paths, cycles: all mean "fix this file"
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise InputError(f"eval suite file {path} is malformed: {reason}") from error


def _leaf_tasks(tree: dict):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaf_tasks(value)
        else:
            yield getattr(key, "group_name", key) if not isinstance(key, str) else key, value


def _check_items(name: str, task, cluster_key: str | None = None) -> None:
    from pipelines.evaluate.items import cluster_key_for, document_cluster

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
