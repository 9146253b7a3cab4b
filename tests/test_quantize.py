"""Quantize stage on a tiny random Llama: formats on disk, weights, cache, and the errors users see.

nice -n 10 pytest tests/test_quantize.py -q   (1-2 min on 2 shared cores; llm-compressor runs once per scheme)
Weights are checked by unpacking the safetensors with torch/numpy here, not with compressed-tensors.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.config import CalibrationConfig, QuantConfig, RunConfig
from pipelines.errors import ConfigError, InputError
from pipelines.models import BaseModel, load_causal_lm
from pipelines.quantize import run_quantize, variant_key
from pipelines.quantize.calibration import load_calibration
from pipelines.quantize.compat import check_backend, check_quant_compatible
from pipelines.quantize.schemes import PRESET_GROUP_SIZES
from pipelines.registry import QUANTIZERS, resolve
from pipelines.storage import read_manifest

from conftest import load_config_file

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCHEMES = ["fp8", "w8a8", "awq", "gptq", "canary-w2"]
Q_PROJ = "model.layers.0.self_attn.q_proj"
PARAGRAPHS = [f"Invoice {i} totals {i * 7} dollars; refunds follow policy {i % 5} within {i} days." for i in range(12)]


def quant_config(preset: str, **overrides) -> QuantConfig:
    return load_config_file(f"quant/{preset}", QuantConfig, **overrides)


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n\n".join(PARAGRAPHS) + "\n")
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def config_for(preset: str, calibration_file: Path, cache_dir: Path, overwrite: bool = False,
               **overrides) -> RunConfig:
    # Few, short texts and a coarse AWQ grid keep the whole file near a minute on 2 cores.
    overrides.setdefault("calibration", {"source": str(calibration_file), "num_samples": 4, "max_seq_length": 32})
    if preset == "awq":
        overrides.setdefault("params", {"n_grid": 4})
    return RunConfig(quant=quant_config(preset, **overrides), cache_dir=str(cache_dir), overwrite=overwrite)


def quantize(cfg: RunConfig, base):
    return run_quantize(cfg.quant, base, Path(cfg.cache_dir), seed=cfg.seed, overwrite=cfg.overwrite)


@pytest.fixture(scope="module")
def variants(tiny_base, calibration_file, cache_dir) -> dict:
    return {name: quantize(config_for(name, calibration_file, cache_dir), tiny_base) for name in SCHEMES}


def tensors(variant) -> dict[str, torch.Tensor]:
    return load_file(Path(variant.checkpoint_dir) / "model.safetensors")


def header_dtypes(variant) -> dict[str, str]:
    with (Path(variant.checkpoint_dir) / "model.safetensors").open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return {name: entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


def unpack_int32(packed: torch.Tensor, num_bits: int, columns: int) -> np.ndarray:
    """Signed ints from compressed-tensors' dense little-endian bit packing, read as a bit stream."""
    bits = np.unpackbits(packed.numpy().astype("<i4").view(np.uint8), axis=1, bitorder="little")
    values = bits[:, : columns * num_bits].reshape(packed.shape[0], columns, num_bits)
    unsigned = (values.astype(np.int64) << np.arange(num_bits)).sum(axis=2)
    return unsigned - (1 << (num_bits - 1))


def dequantized_q_proj(variant, num_bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dense weight, per-element scale) of layer 0's q_proj from the raw checkpoint tensors."""
    found = tensors(variant)
    scale = found[f"{Q_PROJ}.weight_scale"].float().numpy()
    if num_bits:
        rows, columns = found[f"{Q_PROJ}.weight_shape"].tolist()
        quantized = unpack_int32(found[f"{Q_PROJ}.weight_packed"], num_bits, columns).astype(np.float32)
    else:
        quantized = found[f"{Q_PROJ}.weight"].float().numpy()
    group = quantized.shape[1] // scale.shape[1]
    element_scale = np.repeat(scale, group, axis=1)
    return quantized * element_scale, element_scale


def base_q_proj(base: BaseModel) -> np.ndarray:
    return load_file(base.path / "model.safetensors")[f"{Q_PROJ}.weight"].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", SCHEMES)
def test_each_scheme_writes_a_compressed_tensors_checkpoint_with_tokenizer(variants, name):
    checkpoint = Path(variants[name].checkpoint_dir)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (checkpoint / "tokenizer.json").is_file()
    assert read_manifest(checkpoint)["content_hash"] == variants[name].content_hash


@pytest.mark.slow
def test_fp8_stores_float8_weights_and_leaves_lm_head_dense(variants):
    dtypes = header_dtypes(variants["fp8"])
    assert dtypes[f"{Q_PROJ}.weight"] == "F8_E4M3"
    assert dtypes["lm_head.weight"] == "F32" and dtypes["model.embed_tokens.weight"] == "F32"


@pytest.mark.slow
def test_w8a8_stores_int8_weights(variants):
    assert header_dtypes(variants["w8a8"])[f"{Q_PROJ}.weight"] == "I8"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "num_bits"), [("gptq", 4), ("awq", 4), ("canary-w2", 2)])
def test_low_bit_weights_are_packed_int32_in_groups_of_128(variants, name, num_bits):
    found = tensors(variants[name])
    assert found[f"{Q_PROJ}.weight_packed"].dtype == torch.int32
    assert tuple(found[f"{Q_PROJ}.weight_packed"].shape) == (128, 128 * num_bits // 32)
    assert tuple(found[f"{Q_PROJ}.weight_scale"].shape) == (128, 128 // 128)
    weights = json.loads((Path(variants[name].checkpoint_dir) / "config.json").read_text())[
        "quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"]) == (num_bits, 128)


@pytest.mark.slow
def test_round_to_nearest_2bit_is_within_half_a_step_of_the_base(variants, tiny_base):
    dense, scale = dequantized_q_proj(variants["canary-w2"], num_bits=2)
    error = np.abs(dense - base_q_proj(tiny_base))
    assert np.all(error <= scale / 2 * 1.001)
    assert error.mean() > 0.05 * scale.mean()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "num_bits"), [("fp8", None), ("w8a8", None), ("gptq", 4), ("awq", 4)])
def test_quantized_weights_differ_from_base_but_stay_close(variants, tiny_base, name, num_bits):
    norm = "model.layers.0.input_layernorm.weight"
    dense, _ = dequantized_q_proj(variants[name], num_bits)
    # SmoothQuant and AWQ scale q_proj's input columns by s and fold 1/s into the layer norm:
    # undo it with s = base norm / variant norm (s = 1 for the other methods).
    smoothing = load_file(tiny_base.path / "model.safetensors")[norm].numpy() / tensors(variants[name])[norm].numpy()
    original = base_q_proj(tiny_base)
    relative = np.linalg.norm(dense / smoothing - original) / np.linalg.norm(original)
    assert 0 < relative < 0.2


@pytest.mark.slow
def test_fp8_variant_loads_back_and_tracks_base_logits(variants, tiny_base):
    tokens = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base_logits = load_causal_lm(tiny_base.path)(tokens).logits
        variant_logits = load_causal_lm(Path(variants["fp8"].checkpoint_dir))(tokens).logits
    assert torch.isfinite(variant_logits).all()
    assert (torch.linalg.norm(variant_logits - base_logits) / torch.linalg.norm(base_logits)) < 0.1


@pytest.mark.slow
def test_fp8_kernel_path_of_the_gpu_benchmark_serves_the_same_quantization(variants, tiny_base):
    """benchmarks/fp8_kernels.py runs FP8 variants on torch._scaled_mm (which also runs on the CPU)."""
    spec = importlib.util.spec_from_file_location("fp8_kernels", BENCHMARKS / "fp8_kernels.py")
    fp8_kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fp8_kernels)
    tokens = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    checkpoint = Path(variants["fp8"].checkpoint_dir)
    with torch.no_grad():
        emulated = load_causal_lm(checkpoint)(tokens).logits
        served = fp8_kernels.load_fp8_model(tiny_base.path, checkpoint, "cpu", dtype=torch.float32)
        kernel = served(tokens).logits
    assert isinstance(served.get_submodule(Q_PROJ), fp8_kernels.Fp8Linear)
    # Same weights, same per-token activation rule: only the GEMM's summation order differs.
    torch.testing.assert_close(kernel, emulated, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_awq_params_reach_the_awq_modifier(variants):
    recipe = (Path(variants["awq"].checkpoint_dir) / "recipe.yaml").read_text()
    assert "n_grid: 4" in recipe


@pytest.mark.slow
def test_group_size_override_replaces_the_presets_128(tiny_base, calibration_file, cache_dir):
    cfg = config_for("canary-w2", calibration_file, cache_dir, name="w4-g64", scheme="W4A16", group_size=64)
    found = tensors(quantize(cfg, tiny_base))
    assert tuple(found[f"{Q_PROJ}.weight_scale"].shape) == (128, 128 // 64)


@pytest.mark.slow
def test_second_run_reuses_the_cached_checkpoint(variants, tiny_base, calibration_file, cache_dir):
    again = quantize(config_for("gptq", calibration_file, cache_dir), tiny_base)
    assert again.from_cache and not variants["gptq"].from_cache
    assert (again.checkpoint_dir, again.content_hash) == (variants["gptq"].checkpoint_dir, variants["gptq"].content_hash)


@pytest.mark.slow
def test_overwrite_redoes_the_checkpoint_deterministically(variants, tiny_base, calibration_file, cache_dir):
    # A stray file in the cached checkpoint: gone afterwards only if the directory was rebuilt.
    stray = Path(variants["canary-w2"].checkpoint_dir) / "stray-from-before.txt"
    stray.write_text("left by the first build\n")
    redone = quantize(config_for("canary-w2", calibration_file, cache_dir, overwrite=True), tiny_base)
    assert not redone.from_cache and redone.checkpoint_dir == variants["canary-w2"].checkpoint_dir
    assert not stray.exists() and read_manifest(Path(redone.checkpoint_dir))
    assert redone.content_hash == variants["canary-w2"].content_hash


def test_cache_key_follows_params_and_calibration_only_where_used(tiny_base, calibration_file, tmp_path):
    def key(name, texts, **overrides):
        return variant_key(tiny_base, quant_config(name, **overrides), texts, {"torch": "x"}, seed=0)

    assert key("gptq", ["a"]) != key("gptq", ["a"], params={"dampening_frac": 0.05})
    assert key("gptq", ["a"]) != key("gptq", ["b"])
    assert key("fp8", []) == key("fp8", [], calibration={"num_samples": 3})


def test_killed_build_leaves_no_checkpoint(tiny_base, calibration_file, tmp_path, monkeypatch):
    from pipelines.quantize.llmcompressor_backend import LLMCompressorQuantizer

    def crash(self, base, quant, calibration, out_dir, seed):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(LLMCompressorQuantizer, "quantize", crash)
    with pytest.raises(KeyboardInterrupt):
        quantize(config_for("fp8", calibration_file, tmp_path), tiny_base)
    # Nothing but the entry's lock file, which marks nothing as finished.
    assert [p.suffix for p in tmp_path.rglob("*") if p.is_file()] == [".lock"]


def test_quant_none_is_the_base_itself(tiny_base, tmp_path):
    variant = quantize(RunConfig(quant=quant_config("none"), cache_dir=str(tmp_path)), tiny_base)
    assert (variant.checkpoint_dir, variant.content_hash) == (str(tiny_base.path), tiny_base.fingerprint)
    assert variant.size_bytes == sum(p.stat().st_size for p in tiny_base.path.iterdir())
    assert not any(tmp_path.iterdir())


def test_calibration_txt_splits_paragraphs_and_takes_the_first_n(tmp_path):
    path = tmp_path / "cal.txt"
    path.write_text("first\nline two\n\n\nsecond\n\n  \n\nthird\n\nfourth")
    assert load_calibration(CalibrationConfig(source=str(path), num_samples=3)) == ["first\nline two", "second", "third"]


def test_calibration_jsonl_reads_the_configured_field(tmp_path):
    path = tmp_path / "cal.jsonl"
    path.write_text('{"body": "one"}\n{"other": 1}\n\n{"body": "two"}\n')
    assert load_calibration(CalibrationConfig(source=str(path), text_field="body")) == ["one", "two"]


def test_embedded_calibration_reads_the_packaged_text(calibration_file, monkeypatch):
    import pipelines.embedded

    monkeypatch.setattr(pipelines.embedded, "CALIBRATION_TEXT", calibration_file)
    assert load_calibration(CalibrationConfig(source="embedded", num_samples=2)) == PARAGRAPHS[:2]


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"), ("\n\n  \n", "no usable texts"), ('{"text": 1}\n', "no rows with a string field"),
])
def test_unusable_calibration_files_are_one_line_input_errors(tmp_path, content, message):
    path = tmp_path / ("cal.jsonl" if content and "{" in content else "cal.txt")
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        load_calibration(CalibrationConfig(source=str(path)))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unreachable_hub_calibration_dataset_is_an_input_error():
    # conftest sets HF_DATASETS_OFFLINE=1, so this fails the way a machine without hub access does.
    with pytest.raises(InputError, match=r"hf:quantgate-missing/none .*could not be loaded.*\.jsonl"):
        load_calibration(CalibrationConfig(source="hf:quantgate-missing/none"))


def test_group_size_that_does_not_divide_linear_inputs_is_refused(tiny_base):
    with pytest.raises(ConfigError, match=r"group_size=96 .*hidden_size=128"):
        check_quant_compatible(tiny_base.config, quant_config("gptq", group_size=96))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"method": "gtpq"}, "did you mean 'gptq'"),
    ({"scheme": "W4A61"}, "did you mean 'W4A16'"),
    ({"backend": "llmcompresor"}, "did you mean 'llmcompressor'"),
    ({"needs_calibration": False}, "needs calibration data"),
    ({"scheme": "FP8_DYNAMIC"}, "does not apply to scheme FP8_DYNAMIC"),
])
def test_bad_quant_configs_are_refused_before_any_work(tiny_base, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_quant_compatible(tiny_base.config, quant_config("gptq", **overrides))


@pytest.mark.parametrize("backend", ["autogptq", "autoawq"])
def test_legacy_backends_fail_at_config_time_and_at_use(tiny_base, tmp_path, backend):
    quant = quant_config("gptq", backend=backend)
    with pytest.raises(ConfigError, match="end-of-life.*quant.backend=llmcompressor"):
        check_backend(quant)
    with pytest.raises(ConfigError, match="end-of-life"):
        resolve(QUANTIZERS, "quantization backend", backend)().quantize(tiny_base, quant, [], tmp_path, 0)


def test_preset_group_size_table_matches_compressed_tensors():
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES, preset_name_to_scheme

    def group_size(name):
        weights = preset_name_to_scheme(name, ["Linear"]).weights
        return weights.group_size if weights and weights.strategy in ("group", "tensor_group") else None

    assert PRESET_GROUP_SIZES == {name: group_size(name) for name in PRESET_SCHEMES}
