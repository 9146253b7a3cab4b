"""Every number in the schemas has its range checked: a table names, for each numeric field, a value
just outside its range, and the walk fails when a new numeric field is added without a row.

`pytest tests/test_config_ranges.py` (the CLI cases live in tests/test_bad_inputs.py).
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
from omegaconf import OmegaConf

from pipelines.cli import compose_all, to_run_config
from pipelines.config import BACKEND_GROUPS, RunConfig, backend_schemas
from pipelines.errors import ConfigError

# field -> values outside its range (fractions in [0, 1], prices >= 0, confidence in (0, 1), sizes > 0).
OUT_OF_RANGE = {
    "quant.group_size": [0], "quant.calibration.num_samples": [0], "quant.calibration.max_seq_length": [-1],
    "eval.num_fewshot": [-1], "eval.limit": [0], "eval.batch_size": [0], "eval.max_length": [0],
    "eval.reference_max_tokens": [0], "eval.reference_window": [0], "eval.bootstrap_samples": [0],
    "eval.chunk_size": [0, -5],
    "serve.max_model_len": [0], "serve.tensor_parallel_size": [0], "serve.pipeline_parallel_size": [0],
    "serve.gpu_memory_utilization": [0, 1.5], "serve.startup_timeout_s": [0], "serve.agreement_items": [-1],
    "serve.eval_concurrency": [0],
    "bench.input_tokens": [0], "bench.output_tokens": [0], "bench.batch_sizes": [[0], []],
    "bench.requests_per_level": [0], "bench.warmup_requests": [-1], "bench.repeats": [0],
    "bench.slo.ttft_p95_ms": [0], "bench.slo.itl_p95_ms": [-5], "bench.slo.e2e_p95_ms": [0],
    "bench.target_qps": [0], "bench.headroom": [-0.1, 1],
    "hardware.price_per_hour.on_demand": [-1], "hardware.price_per_hour.reserved": [-0.01],
    "hardware.price_per_hour.spot": [-1], "hardware.memory_bandwidth_gb_s": [0], "hardware.memory_gb": [0],
    "hardware.peak_dense_tflops.float32": [0],
    "gate.confidence": [0, 1, 1.5], "gate.tolerance.max_drop": [-0.01, 2], "gate.max_flip_rate": [-0.1, 1.5],
    "gate.min_agreement": [-0.1, 1.5],
    "gate.max_kl": [-1], "gate.min_cost_saving": [-0.5, 1.2], "gate.min_throughput_gain": [-1],
    "tracking.log_checkpoint_max_mb": [-1],
}
# Numbers that are valid whatever their value.
UNBOUNDED = {"seed", "eval.seed", "bench.seed"}


def numeric_fields(schema: type = RunConfig, prefix: str = "") -> set[str]:
    """Dotted names of every int/float field (and list/dict of them) reachable from `schema`."""
    found = set()
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        hint, name = hints[field.name], f"{prefix}{field.name}"
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = args[0] if len(args) == 1 and typing.get_origin(hint) is not dict else hint
        if dataclasses.is_dataclass(inner):
            found |= numeric_fields(inner, f"{name}.")
        elif inner in (int, float) or typing.get_origin(inner) is list and typing.get_args(inner)[0] in (int, float):
            found.add(name)
        elif typing.get_origin(inner) is dict and typing.get_args(inner)[1] in (int, float):
            found.add(f"{name}.float32")  # a dict of numbers: one entry stands for all
    return found


def test_table_covers_every_numeric_field():
    # Each backend's own schema (its fields exist only under it) counts too.
    own = {f"{group}.{name}" for group in BACKEND_GROUPS for schema in backend_schemas(group).values()
           for name in numeric_fields(schema)}
    assert numeric_fields() | own == set(OUT_OF_RANGE) | UNBOUNDED


@pytest.fixture(scope="module")
def composed():
    """The default config, and one with serve=vllm (its schema holds every serve number)."""
    compose_all([])  # registers the schemas and proves the defaults are valid
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="pipelines.conf", version_base="1.3"):
        return {"": compose(config_name="config"), "serve": compose(config_name="config", overrides=["serve=vllm"])}


@pytest.mark.parametrize("key,value", [(k, v) for k, values in OUT_OF_RANGE.items() for v in values],
                         ids=lambda item: str(item))
def test_out_of_range_value_is_refused_naming_the_field(composed, key, value):
    cfg = composed.get(key.split(".")[0], composed[""]).copy()
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError) as error:
        to_run_config(cfg)
    assert key.rsplit(".", 1)[0] in str(error.value) and key.rsplit(".", 1)[1] in str(error.value)


@pytest.mark.parametrize("key,value", [("gate.max_flip_rate", 1.0), ("gate.min_cost_saving", 0.0),
                                       ("hardware.price_per_hour.spot", 0), ("gate.min_throughput_gain", -0.1)])
def test_values_at_the_edge_of_the_range_are_accepted(composed, key, value):
    cfg = composed[""].copy()
    OmegaConf.update(cfg, key, value)
    to_run_config(cfg)
