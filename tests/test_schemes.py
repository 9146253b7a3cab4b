"""pipelines/quantize/schemes.py answers every scheme fact for every conf/quant/*.yaml, and the modules
that used to hold their own copy (sizing, quantize, lineage, the vLLM backend) still give the answers
they gave before it existed: the expected values below were written down from that code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_config_file

from pipelines.cli import compose_all
from pipelines.config import CalibrationConfig, ModelConfig, QuantConfig
from pipelines.errors import ConfigError
from pipelines.models import BaseModel
from pipelines.quantize import schemes, variant_key, with_provenance
from pipelines.records import Variant
from pipelines.serve.vllm_server import VLLMServer
from pipelines.sizing import model_size, quantize_memory, roofline_shape, variant_bytes
from pipelines.track.lineage import _calibration_ref

QUANT_DIR = Path(__file__).resolve().parents[1] / "conf" / "quant"
NAMES = ["awq", "canary-w2", "fp8", "gptq", "none", "w8a8"]

# name: preset group size ("-": no preset), (bits, group, scale bytes) on a bfloat16 base,
#       compute dtype on float32 / bfloat16, reads calibration data
FACTS = {
    "awq": (128, (4, 128, 2.0), "float32", "bfloat16", True),
    "canary-w2": (128, (2, 128, 2.0), "float32", "bfloat16", False),
    "fp8": (None, (8, None, 0.0), "float8", "float8", False),
    "gptq": (128, (4, 128, 2.0), "float32", "bfloat16", True),
    "none": ("-", (16, None, 0.0), "float32", "bfloat16", False),
    "w8a8": (None, (8, None, 2.0), "int8", "int8", True),
}
# A 2-layer decoder: 1,824,000 parameters, of which 1,310,720 in decoder Linears and 256,000 in lm_head.
SHAPE = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
         "vocab_size": 1000}
# name: variant bytes on a float32 / bfloat16 base (W4A16 on bfloat16: 1,310,720 x 4/8 + 1,310,720/128 x 2
#       + 513,280 x 2 = 1,702,400), quantize memory (CPU, GPU bytes) for model=llama3-8b's calibration,
#       the cache key follows calibration settings, lineage lists calibration data, vLLM on CPU refuses float32
CALL_SITES = {
    "awq": (2728960.0, 1702400.0, (540518912.0, 11796480.0), True, True, True),
    "canary-w2": (2401280.0, 1374720.0, (3648000.0, 1310720.0), False, False, False),
    "fp8": (3363840.0, 2337280.0, (3648000.0, 1310720.0), False, False, False),
    "gptq": (2728960.0, 1702400.0, (540518912.0, 14417920.0), True, True, True),
    "none": (7296000.0, 3648000.0, (3648000.0, 1310720.0), False, False, False),
    "w8a8": (3363840.0, 2337280.0, (540518912.0, 14417920.0), True, True, False),
}


def quant(name: str) -> QuantConfig:
    return load_config_file(QUANT_DIR / f"{name}.yaml", QuantConfig)


def test_the_tables_cover_every_quant_config():
    assert sorted(path.stem for path in QUANT_DIR.glob("*.yaml")) == NAMES == sorted(FACTS) == sorted(CALL_SITES)


@pytest.mark.parametrize("name", NAMES)
def test_schemes_answers_each_fact(name):
    q = quant(name)
    group, weights, compute_f32, compute_bf16, calibrates = FACTS[name]
    assert schemes.PRESET_GROUP_SIZES.get(schemes.preset_name(q.scheme), "-") == group
    assert schemes.weight_format(q.scheme, 16) == weights
    assert (schemes.compute_dtype(q.scheme, "float32"), schemes.compute_dtype(q.scheme, "bfloat16")) == (
        compute_f32, compute_bf16)
    assert schemes.uses_calibration(q) is calibrates


@pytest.fixture(scope="module")
def run_configs():
    configs = compose_all(["-m", f"quant={','.join(NAMES)}", "model=llama3-8b"])
    return {cfg.quant.name: cfg for cfg in configs}


@pytest.mark.parametrize("name", NAMES)
def test_the_old_call_sites_give_the_same_answers(name, run_configs):
    q = quant(name)
    f32_bytes, bf16_bytes, memory, key_follows, lineage, vllm_refuses = CALL_SITES[name]
    sizes = {dtype: model_size(SHAPE, ModelConfig(name="m", source="/m", dtype=dtype)) for dtype in ("float32", "bfloat16")}
    assert (variant_bytes(sizes["float32"], q), variant_bytes(sizes["bfloat16"], q)) == (f32_bytes, bf16_bytes)
    assert roofline_shape(sizes["bfloat16"], 1.0, q.scheme).compute_dtype == FACTS[name][3]
    assert quantize_memory(sizes["bfloat16"], run_configs[name]) == memory
    assert _key_follows_calibration(q) is key_follows
    assert (_calibration_ref(_recorded_variant(q)) is not None) is lineage
    assert _vllm_refuses_float32_on_cpu(name) is vllm_refuses


def _recorded_variant(q: QuantConfig) -> Variant:
    """The variant record as the quantize stage completes it: lineage reads its calibration from there."""
    variant = Variant(name=q.name, base="b", backend=q.backend, method=q.method, scheme=q.scheme,
                      checkpoint_dir="/nowhere", size_bytes=0, content_hash="h", cache_key="k", quantize_seconds=0.0,
                      from_cache=False)
    return with_provenance(variant, q)


def _key_follows_calibration(q: QuantConfig) -> bool:
    base = BaseModel(name="b", path=Path("/b"), fingerprint="f", config={})
    more = dataclasses.replace(q, calibration=dataclasses.replace(q.calibration, num_samples=q.calibration.num_samples + 1))
    return variant_key(base, q, [], {}, 0) != variant_key(base, more, [], {}, 0)


def _vllm_refuses_float32_on_cpu(name: str) -> bool:
    (cfg,) = compose_all([f"quant={name}", "serve=vllm", f"serve.python={sys.executable}", "serve.dtype=float32"])
    try:
        VLLMServer.check(cfg)
    except ConfigError as error:
        assert "no float32 kernel" in str(error)
        return True
    return False


@pytest.mark.parametrize("method, scheme, needs_calibration, expected", [
    ("none", None, True, False),  # the baseline reads no data, whatever the flag says
    ("rtn", "W2A16", False, False),  # data-free round-to-nearest
    ("rtn", "W4A16", True, True),  # configured to
    ("gptq", "W4A16", False, True),  # the method needs it
    ("rtn", "FP8", False, True),  # static activation scales are set from data
])
def test_one_rule_says_whether_a_variant_reads_calibration_data(method, scheme, needs_calibration, expected):
    assert schemes.calibrates(method, scheme, needs_calibration) is expected


def test_a_scheme_that_needs_data_without_it_is_a_config_error():
    q = QuantConfig(name="x", method="rtn", scheme="FP8", calibration=CalibrationConfig(source="embedded"))
    with pytest.raises(ConfigError, match="scheme FP8 needs calibration data"):
        schemes.check_scheme(q)


def test_gptqmodel_bits_and_symmetry_come_from_the_scheme_name():
    assert [schemes.weight_only_int(s) for s in ("W4A16", "w8a16_asym", "W8A8", "FP8_DYNAMIC", None)] == [
        (4, True), (8, False), None, None, None]


def test_schemes_imports_no_heavy_library():
    heavy = ["torch", "transformers", "llmcompressor", "compressed_tensors", "gptqmodel", "vllm"]
    code = (f"import sys, pipelines.quantize.schemes; loaded = [m for m in {heavy!r} if m in sys.modules]; "
            "assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
