"""Cheap up-front checks that a quant config can work on a model, without importing torch.

Called once per config by preflight (`check_quant_compatible`, which runs `check_backend`), so
`python -m pipelines.run quant=gptq quant.backend=autogptq` fails in milliseconds with one line
instead of minutes into a run; `run_quantize` trusts a config that passed.
"""

from __future__ import annotations

from typing import Any

from pipelines.config import QuantConfig
from pipelines.errors import ConfigError
from pipelines.quantize.legacy import LEGACY_BACKENDS, legacy_backend_error
from pipelines.registry import QUANTIZERS, did_you_mean, resolve

# "none" is handled by run_quantize itself (the base is the variant), so it has no registry line.
BACKENDS = ["none", *QUANTIZERS]
METHODS = ["none", "rtn", "gptq", "awq", "smoothquant_gptq"]
CALIBRATED_METHODS = {"gptq", "awq", "smoothquant_gptq"}

# compressed-tensors 0.19.0 presets (quant_scheme.PRESET_SCHEMES) -> the group size their weights
# are quantized in, or None when they are not group-wise (per tensor / channel / block).
# tests/test_quantize.py checks this table against the installed library.
PRESET_GROUP_SIZES: dict[str, int | None] = {
    "UNQUANTIZED": None, "W8A8": None, "INT8": None, "FP8": None, "FP8_DYNAMIC": None, "FP8_BLOCK": None,
    "W4A16_ASYM": 128, "W4AFP8": 128, "NVFP4A16": 16, "NVFP4": 16,
    "MXFP4A16": 32, "MXFP4": 32, "MXFP8A16": 32, "MXFP8": 32,
    **{f"W{w}A{a}": 128 for w in range(2, 9) for a in (4, 8, 16) if w <= a and f"W{w}A{a}" != "W8A8"},
}
# Presets with static (calibrated) activation scales: data-free round-to-nearest cannot set them.
STATIC_ACTIVATION_PRESETS = {"FP8", "NVFP4"}


def check_backend(quant: QuantConfig) -> None:
    """Known backend and method; legacy backends get their routed error. No heavy imports."""
    if quant.backend in LEGACY_BACKENDS:
        raise legacy_backend_error(quant.backend)
    if quant.backend not in BACKENDS:
        raise ConfigError("quant.backend: " + did_you_mean("quantization backend", quant.backend, BACKENDS))
    if quant.method not in METHODS:
        raise ConfigError("quant.method: " + did_you_mean("quantization method", quant.method, METHODS))
    if (quant.backend == "none") != (quant.method == "none"):
        raise ConfigError(f"quant.backend={quant.backend} with quant.method={quant.method}: the baseline needs "
                          "both set to none, a quantized variant neither (e.g. quant=fp8)")
    if quant.backend != "none":
        # A backend may check its own limits up front (its module imports nothing heavy).
        backend_check = getattr(resolve(QUANTIZERS, "quantization backend", quant.backend), "check", None)
        if backend_check is not None:
            backend_check(quant)


def check_quant_compatible(model_config: dict[str, Any], quant: QuantConfig) -> None:
    """Raise ConfigError when `quant` cannot work on a model with this config.json, before any work."""
    check_backend(quant)
    if quant.method == "none":
        return
    scheme = (quant.scheme or "").upper()
    if scheme not in PRESET_GROUP_SIZES:
        raise ConfigError("quant.scheme: " + did_you_mean("compressed-tensors scheme", quant.scheme or "",
                                                          PRESET_GROUP_SIZES))
    _check_calibration(quant, scheme)
    _check_group_size(model_config, quant, scheme)


def _check_calibration(quant: QuantConfig, scheme: str) -> None:
    needs_data = quant.method in CALIBRATED_METHODS or scheme in STATIC_ACTIVATION_PRESETS
    if needs_data and not (quant.needs_calibration and quant.calibration.source):
        why = f"quant.method={quant.method}" if quant.method in CALIBRATED_METHODS else f"scheme {scheme}"
        raise ConfigError(f"{why} needs calibration data but none is configured; set "
                          "quant.needs_calibration=true and quant.calibration.source=embedded (or a .txt/.jsonl)")


def _check_group_size(model_config: dict[str, Any], quant: QuantConfig, scheme: str) -> None:
    preset_group = PRESET_GROUP_SIZES[scheme]
    if quant.group_size is not None and preset_group is None:
        raise ConfigError(f"quant.group_size={quant.group_size} does not apply to scheme {scheme} (not group-wise); "
                          "remove it or pick a group-wise scheme such as W4A16")
    group = quant.group_size or preset_group
    if group is None:
        return
    bad = {name: dim for name, dim in linear_input_dims(model_config).items() if dim % group}
    if bad:
        dims = ", ".join(f"{name}={dim}" for name, dim in bad.items())
        raise ConfigError(f"quant.group_size={group} does not divide the model's Linear input dims ({dims}); "
                          "choose a group size that divides them (e.g. 32 or 64)")


def linear_input_dims(model_config: dict[str, Any]) -> dict[str, int]:
    """Input widths of a decoder's Linear layers: attention/MLP inputs, o_proj, down_proj."""
    config = model_config.get("text_config", model_config)
    dims = {"hidden_size": config.get("hidden_size"), "intermediate_size": config.get("intermediate_size")}
    heads = config.get("num_attention_heads")
    if heads and dims["hidden_size"]:
        head_dim = config.get("head_dim") or dims["hidden_size"] // heads
        dims["num_heads*head_dim"] = heads * head_dim
    return {name: int(dim) for name, dim in dims.items() if dim}
