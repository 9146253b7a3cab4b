"""Checks that run before any expensive work: every input a run needs is there and usable.

Called by the CLI for every config of a command (each sweep combination) and by `run_variant`.
Each failure is a `UserError` with one line naming the bad value and the fix.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from pipelines.config import ModelConfig, RunConfig
from pipelines.storage import check_writable

log = logging.getLogger(__name__)


def preflight(cfg: RunConfig) -> None:
    from pipelines.plan import check_plan

    check_plan(cfg)  # fits the hardware, this machine and its disk; hub access: before anything is written
    check_writable(Path(cfg.cache_dir), "cache_dir")
    model_config = base_model_config(cfg.model)
    _check_quant(cfg, model_config)
    from pipelines.evaluate import check_evaluate
    from pipelines.evaluate.sequential import check as check_sequential

    check_evaluate(cfg.eval)  # eval.params, and every suite (pipelines/evaluate/suites.py)
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
