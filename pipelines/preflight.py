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

from pipelines.config import ModelConfig, RunConfig
from pipelines.errors import InputError
from pipelines.evaluate import check_evaluate
from pipelines.evaluate.sequential import check as check_sequential
from pipelines.models import check_causal_lm, is_hub_id, local_model_directory, read_model_config
from pipelines.quantize.calibration import load_calibration
from pipelines.quantize.compat import check_quant_compatible
from pipelines.quantize.schemes import uses_calibration
from pipelines.registry import BENCH_ENGINES, EVAL_RUNNERS, check_name
from pipelines.serve import check_serve, check_serve_reachable
from pipelines.shape import parse_config_json
from pipelines.storage import check_writable
from pipelines.track import check_reachable

log = logging.getLogger(__name__)


def preflight(cfg: RunConfig) -> None:
    """Every check, cheapest first: a bad name or value fails in milliseconds, before any library loads."""
    config_json = local_config_json(cfg.model)
    _check_names_and_bounds(cfg, config_json)
    base_config = _check_paths_and_reachability(cfg, config_json)
    _check_with_libraries(cfg, base_config)


def local_config_json(model: ModelConfig) -> dict | None:
    """The base's config.json, read once for every check; None for a hub id, or a file missing or malformed:
    then the plan and checkpoint checks read it themselves, so the same check reports the same error."""
    path = None if is_hub_id(model.source) else local_model_directory(model) / "config.json"
    try:
        return parse_config_json(path) if path is not None and path.is_file() else None
    except InputError:
        return None


def _check_names_and_bounds(cfg: RunConfig, config_json: dict | None) -> None:
    """Backend names, quant scheme and group size, prices and projections: the config and config.json alone."""
    from pipelines.cost import check_cost  # scipy: only once the names are known to be valid

    # Until a hub model is fetched (or while a local config.json is unreadable) model.shape stands for it.
    shape = config_json if config_json is not None else dict(cfg.model.shape)
    check_quant_compatible(shape, cfg.quant)  # backend, method, scheme, group size
    check_name(EVAL_RUNNERS, "eval runner", cfg.eval.runner)
    check_sequential(cfg)
    if cfg.bench.enabled:
        check_name(BENCH_ENGINES, "bench engine", cfg.bench.engine)
        check_cost(cfg.hardware)


def _check_paths_and_reachability(cfg: RunConfig, config_json: dict | None) -> dict | None:
    """The plan fits, the server can start, the cache is writable, the tracker answers, the base is a
    complete checkpoint; returns its config.json (None for a hub id: it is checked when fetched)."""
    from pipelines.plan import check_plan  # scipy: only once names and bounds passed

    check_plan(cfg, config_json)  # fits the hardware, this machine and its disk; hub access: before anything is written
    check_serve(cfg)
    check_serve_reachable(cfg)  # endpoints answer and serve their models: before anything is written
    check_writable(Path(cfg.cache_dir), "cache_dir")
    check_reachable(cfg.tracking)
    if is_hub_id(cfg.model.source):
        return None
    return read_model_config(local_model_directory(cfg.model), cfg.model, config_json)


def _check_with_libraries(cfg: RunConfig, base_config: dict | None) -> None:
    """Checks that import lm-eval, a bench engine or transformers: eval.params and bench.params against
    their libraries' signatures, the base's tensors, the calibration data, and last the suites."""
    if cfg.bench.enabled:
        from pipelines.bench import check_bench  # scipy: only once paths and reachability passed

        check_bench(cfg)
    if base_config is not None:
        _check_causal_lm_once(local_model_directory(cfg.model), json.dumps(base_config, sort_keys=True),
                              cfg.model.trust_remote_code)
    if uses_calibration(cfg.quant):
        load_calibration(cfg.quant.calibration)
    check_evaluate(cfg.eval)  # eval.params, and every suite (pipelines/evaluate/suites.py)


@lru_cache(maxsize=8)
def _check_causal_lm_once(path: Path, config_json: str, trust_remote_code: bool) -> None:
    check_causal_lm(path, json.loads(config_json), trust_remote_code)
