"""Checks that run before any expensive work: every input a run needs is there and usable.

Called once per config of a command: by the CLI for each sweep combination before any job starts,
or by `run_variant` from the Python API. Cheap checks run first (names, bounds, prices, paths,
reachability), then the ones that import heavy libraries; stages trust a config that passed.
Each failure is a `UserError` with one line naming the bad value and the fix.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from pipelines.config import EvalConfig, ModelConfig, RunConfig
from pipelines.errors import ConfigError, InputError
from pipelines.registry import BENCH_ENGINES, EVAL_RUNNERS, check_name, did_you_mean, resolve
from pipelines.storage import check_writable

log = logging.getLogger(__name__)


def preflight(cfg: RunConfig) -> None:
    """Every check, cheapest first: a bad name or value fails in milliseconds, before any library loads."""
    _check_names_and_bounds(cfg)
    base_config = _check_paths_and_reachability(cfg)
    _check_with_libraries(cfg, base_config)


def _check_names_and_bounds(cfg: RunConfig) -> None:
    """Backend names, quant scheme and group size, prices and projections: the config and config.json alone."""
    from pipelines.cost import check_cost
    from pipelines.quantize.compat import check_quant_compatible

    check_quant_compatible(declared_shape(cfg.model), cfg.quant)  # backend, method, scheme, group size
    check_name(EVAL_RUNNERS, "eval runner", cfg.eval.runner)
    if cfg.bench.enabled:
        check_name(BENCH_ENGINES, "bench engine", cfg.bench.engine)
        check_cost(cfg.hardware)


def _check_paths_and_reachability(cfg: RunConfig) -> dict | None:
    """The plan fits, the server can start, the cache is writable, the tracker answers, the base is a
    complete checkpoint; returns its config.json (None for a hub id: it is checked when fetched)."""
    from pipelines.models import is_hub_id, local_model_directory, read_model_config
    from pipelines.plan import check_plan
    from pipelines.serve import check_serve
    from pipelines.track import check_reachable

    check_plan(cfg)  # fits the hardware, this machine and its disk; hub access: before anything is written
    check_serve(cfg)
    check_writable(Path(cfg.cache_dir), "cache_dir")
    check_reachable(cfg.tracking)
    return None if is_hub_id(cfg.model.source) else read_model_config(local_model_directory(cfg.model), cfg.model)


def _check_with_libraries(cfg: RunConfig, base_config: dict | None) -> None:
    """Checks that import lm-eval, a bench engine or transformers: eval.params and bench.params against
    their libraries' signatures, the base's tensors, the calibration data, and last the suites."""
    from pipelines.models import local_model_directory
    from pipelines.quantize.calibration import load_calibration

    resolve(EVAL_RUNNERS, "eval runner", cfg.eval.runner).check(cfg.eval)
    if cfg.bench.enabled:
        from pipelines.bench import check_bench

        check_bench(cfg)
    if base_config is not None:
        _check_causal_lm_once(local_model_directory(cfg.model), json.dumps(base_config, sort_keys=True),
                              cfg.model.trust_remote_code)
    if cfg.quant.needs_calibration:
        load_calibration(cfg.quant.calibration)
    check_suites(cfg.eval)


def declared_shape(model: ModelConfig) -> dict:
    """The base's config.json as written when it is local, else `model.shape` (a hub model, until fetched)."""
    from pipelines.models import is_hub_id, local_model_directory

    path = None if is_hub_id(model.source) else local_model_directory(model) / "config.json"
    try:
        return json.loads(path.read_text()) if path is not None and path.is_file() else dict(model.shape)
    except ValueError:  # malformed: the checkpoint directory check reports it
        return dict(model.shape)


@lru_cache(maxsize=8)
def _check_causal_lm_once(path: Path, config_json: str, trust_remote_code: bool) -> None:
    from pipelines.models import check_causal_lm

    check_causal_lm(path, json.loads(config_json), trust_remote_code)


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
