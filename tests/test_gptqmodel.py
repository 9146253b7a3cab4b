"""GPTQModel backend on the shared tiny random Llama: its checkpoint formats, weights, and loading back.

nice -n 10 pytest tests/test_gptqmodel.py -q   (in an environment with `pip install -e '.[gptqmodel]'`)
Skipped where gptqmodel is not installed. GPTQ weights are unpacked here with numpy (GPTQ's int32
layout: 8 nibbles per word along the input dim, little end first) and compared with the base weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file as load_torch

from pipelines.config import CalibrationConfig, QuantConfig
from pipelines.errors import ConfigError
from pipelines.models import load_causal_lm
from pipelines.quantize.gptqmodel_backend import GPTQModelQuantizer, gptqmodel_settings

# find_spec, not importorskip: importing GPTQModel costs ~5-15 s of CPU, which only the slow tests need.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="gptqmodel is not installed")

METHODS = ["gptq", "awq"]
Q_PROJ = "model.layers.0.self_attn.q_proj"
TEXTS = [f"Invoice {i} lists {i % 7 + 2} units at {i * 3 + 11} dollars; refunds follow policy {i % 5} "
         f"within {i + 10} days, as the auditor of the Marrow Company confirmed." for i in range(16)]


def quant(method: str, **overrides) -> QuantConfig:
    return QuantConfig(name=f"{method}-gptqmodel", backend="gptqmodel", method=method, scheme="W4A16",
                       group_size=128, needs_calibration=True,
                       calibration=CalibrationConfig(max_seq_length=64), **overrides)


@pytest.fixture(scope="module")
def checkpoints(tiny_base, tmp_path_factory) -> dict[str, Path]:
    variants = tmp_path_factory.mktemp("variants")
    for method in METHODS:
        GPTQModelQuantizer().quantize(tiny_base, quant(method), TEXTS, variants / method, seed=0)
    return {method: variants / method for method in METHODS}


@pytest.fixture(params=METHODS)
def checkpoint(request, checkpoints) -> tuple[str, Path]:
    return request.param, checkpoints[request.param]


def quantization_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())["quantization_config"]


def load_file(path: Path) -> dict[str, np.ndarray]:
    # Through torch: AWQ checkpoints hold bfloat16 tensors, which numpy cannot represent.
    return {name: tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
            for name, tensor in load_torch(path).items()}


def logits(directory: Path, token_ids: list[int]) -> np.ndarray:
    import torch

    model = load_causal_lm(directory)
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float().numpy()


@pytest.mark.slow
def test_checkpoint_declares_gptqmodel_format_4bit_group_128(checkpoint):
    method, directory = checkpoint
    config = quantization_config(directory)
    assert (config["quant_method"], config["bits"], config["group_size"]) == (method, 4, 128)
    assert (directory / "tokenizer.json").is_file()


@pytest.mark.slow
def test_checkpoint_holds_only_model_files_and_the_base_generation_config(checkpoint, tiny_base):
    _, directory = checkpoint
    assert not (directory / "quant_log.csv").exists()
    assert quantization_config(directory)["meta"]["offload_to_disk_path"] is None  # no random temp path
    assert (directory / "generation_config.json").read_text() == (tiny_base.path / "generation_config.json").read_text()


@pytest.mark.slow
def test_linear_weights_are_replaced_by_packed_4bit_tensors(checkpoint):
    _, directory = checkpoint
    tensors = load_file(directory / "model.safetensors")
    assert f"{Q_PROJ}.weight" not in tensors
    assert tensors[f"{Q_PROJ}.qweight"].dtype == np.int32
    assert tensors[f"{Q_PROJ}.scales"].shape == (128 // 128, 128)  # one group of 128 inputs per output
    assert "lm_head.weight" in tensors


@pytest.mark.slow
def test_gptq_weights_unpack_close_to_the_base_but_changed(checkpoints, tiny_base):
    tensors = load_file(checkpoints["gptq"] / "model.safetensors")
    shifts = np.arange(8, dtype=np.uint32) * 4
    words = tensors[f"{Q_PROJ}.qweight"].view(np.uint32)  # [in / 8, out]
    q = ((words[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(-1, words.shape[1])  # [in, out]
    # checkpoint_format "gptq" (v1) stores each zero point minus one.
    zeros = ((tensors[f"{Q_PROJ}.qzeros"].view(np.uint32)[:, :, None] >> shifts) & 0xF).reshape(1, -1) + 1
    dense = (q.astype(np.float32) - zeros) * tensors[f"{Q_PROJ}.scales"].astype(np.float32)
    base = load_file(tiny_base.path / "model.safetensors")[f"{Q_PROJ}.weight"].T
    step = np.broadcast_to(tensors[f"{Q_PROJ}.scales"].astype(np.float32), base.shape)
    assert not np.allclose(dense, base)
    # GPTQ moves weights to compensate earlier rounding, but stays within a couple of grid steps.
    assert np.mean(np.abs(dense - base) <= 2 * step) > 0.99


@pytest.mark.slow
def test_checkpoint_loads_through_load_causal_lm_with_logits_near_the_base(checkpoint, tiny_base):
    _, directory = checkpoint
    token_ids = list(range(3, 35))
    base, variant = logits(tiny_base.path, token_ids), logits(directory, token_ids)
    assert np.isfinite(variant).all()
    assert not np.allclose(variant, base)
    assert np.corrcoef(variant.ravel(), base.ravel())[0, 1] > 0.9


@pytest.mark.slow
def test_same_seed_gives_byte_identical_checkpoint(checkpoints, tiny_base, tmp_path):
    # The content hash keys cached evaluations: a rerun must not look like a new model.
    GPTQModelQuantizer().quantize(tiny_base, quant("gptq"), TEXTS, tmp_path / "again", seed=0)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (checkpoints["gptq"] / name).read_bytes()


@pytest.mark.slow
def test_logs_stay_out_of_the_working_directory(checkpoint):
    _, directory = checkpoint
    assert not (Path.cwd() / "logs").exists() or not any((Path.cwd() / "logs").glob("*_log_*.log"))
    assert any((directory.parent / "logs" / "gptqmodel").glob("*.log"))


@pytest.mark.parametrize("overrides, fragment", [
    ({"method": "smoothquant_gptq"}, "quant.method=smoothquant_gptq"),
    ({"scheme": "FP8_DYNAMIC"}, "quant.scheme=FP8_DYNAMIC"),
    ({"ignore": ["lm_head", "re:.*gate_proj"]}, "quant.ignore"),
])
def test_unsupported_settings_are_config_errors(overrides, fragment):
    config = quant("gptq")
    for key, value in overrides.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        gptqmodel_settings(config)


def test_scheme_sets_bits_and_symmetry():
    config = quant("gptq")
    config.scheme = "W8A16_ASYM"
    assert gptqmodel_settings(config) == {"bits": 8, "group_size": 128, "sym": False}


def test_missing_package_names_the_extra_to_install(tiny_base, tmp_path, monkeypatch):
    from pipelines.quantize import gptqmodel_backend

    monkeypatch.setattr(gptqmodel_backend.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[gptqmodel\]'"):
        GPTQModelQuantizer().quantize(tiny_base, quant("gptq"), TEXTS, tmp_path / "out", seed=0)


@pytest.mark.slow  # checking params against GPTQConfig imports GPTQModel
def test_unknown_param_is_a_config_error(tiny_base, tmp_path):
    config = quant("gptq", params={"no_such_knob": 1})
    with pytest.raises(ConfigError, match="GPTQConfig"):
        GPTQModelQuantizer().quantize(tiny_base, config, TEXTS, tmp_path / "out", seed=0)
