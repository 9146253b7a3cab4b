"""Every fact about a quantization scheme and method, in one light module (no torch, llm-compressor, transformers).

Schemes are compressed-tensors presets (`quant.scheme`: FP8_DYNAMIC, W8A8, W4A16, W2A16, ...); methods
are `quant.method` (rtn, gptq, awq, smoothquant_gptq; none for the baseline). What the quantize
backends check, what sizing and plan count (bits per weight, scale bytes, matmul dtype), what the vLLM
backend refuses and what lineage records all read it here, so they cannot disagree. Whether a run reads
calibration data is one rule, `uses_calibration`.
Exercised by `pytest tests/test_schemes.py` and `python -m pipelines.run quant=gptq plan=true`.
"""

from __future__ import annotations

import re

from pipelines.config import QuantConfig
from pipelines.errors import ConfigError
from pipelines.registry import did_you_mean

METHODS = ["none", "rtn", "gptq", "awq", "smoothquant_gptq"]
# Methods that read calibration texts (activation statistics, Hessians, smoothing scales).
CALIBRATED_METHODS = frozenset({"gptq", "awq", "smoothquant_gptq"})
# Methods whose llm-compressor modifier keeps a float32 Hessian per Linear input on the GPU.
HESSIAN_METHODS = frozenset({"gptq", "smoothquant_gptq"})

# compressed-tensors 0.19.0 presets (quant_scheme.PRESET_SCHEMES) -> the group size their weights
# are quantized in, or None when they are not group-wise (per tensor / channel / block).
# tests/test_quantize.py checks this table against the installed library.
PRESET_GROUP_SIZES: dict[str, int | None] = {
    "UNQUANTIZED": None, "W8A8": None, "INT8": None, "FP8": None, "FP8_DYNAMIC": None, "FP8_BLOCK": None,
    "W4A16_ASYM": 128, "W4AFP8": 128, "NVFP4A16": 16, "NVFP4": 16,
    "MXFP4A16": 32, "MXFP4": 32, "MXFP8A16": 32, "MXFP8": 32,
    **{f"W{w}A{a}": 128 for w in range(2, 9) for a in (4, 8, 16) if w <= a and f"W{w}A{a}" != "W8A8"},
}
# Methods whose recipe takes precision overrides (extra config groups); AWQ's smoothing assumes one scheme.
OVERRIDE_METHODS = frozenset({"rtn", "gptq"})
# Presets with static (calibrated) activation scales: data-free round-to-nearest cannot set them.
STATIC_ACTIVATION_PRESETS = frozenset({"FP8", "NVFP4"})
# Weight-only integer schemes W<bits>A16, symmetric unless _ASYM; their group size unless set: 128.
WEIGHT_ONLY_INT = re.compile(r"^W([2-8])A16(_ASYM)?$")
WEIGHT_ONLY_GROUP_SIZE = 128


def preset_name(scheme: str | None) -> str:
    return (scheme or "").upper()


def check_scheme(quant: QuantConfig) -> None:
    """Preflight: the scheme is a compressed-tensors preset and has the calibration data it needs."""
    scheme = preset_name(quant.scheme)
    if scheme not in PRESET_GROUP_SIZES:
        raise ConfigError("quant.scheme: " + did_you_mean("compressed-tensors scheme", quant.scheme or "",
                                                          PRESET_GROUP_SIZES))
    _check_overrides(quant)
    if needs_calibration_data(quant.method, scheme) and not (quant.needs_calibration and quant.calibration.source):
        why = f"quant.method={quant.method}" if quant.method in CALIBRATED_METHODS else f"scheme {scheme}"
        raise ConfigError(f"{why} needs calibration data but none is configured; set "
                          "quant.needs_calibration=true and quant.calibration.source=embedded (or a .txt/.jsonl)")


def _check_overrides(quant: QuantConfig) -> None:
    if quant.precision_overrides and quant.method not in OVERRIDE_METHODS:
        raise ConfigError(f"quant.precision_overrides work with quant.method {' or '.join(sorted(OVERRIDE_METHODS))}, "
                          f"not {quant.method}; keep those layers unquantized with quant.ignore instead")
    for override in quant.precision_overrides:
        name = preset_name(override.scheme)
        if name not in PRESET_GROUP_SIZES or name in STATIC_ACTIVATION_PRESETS:
            raise ConfigError("quant.precision_overrides scheme: " + did_you_mean(
                "data-free compressed-tensors scheme", override.scheme,
                [p for p in PRESET_GROUP_SIZES if p not in STATIC_ACTIVATION_PRESETS]))


def group_size(quant: QuantConfig) -> int | None:
    """The group size weights are quantized in: quant.group_size, else the preset's; None if not group-wise."""
    scheme = preset_name(quant.scheme)
    preset_group = PRESET_GROUP_SIZES[scheme]
    if quant.group_size is not None and preset_group is None:
        raise ConfigError(f"quant.group_size={quant.group_size} does not apply to scheme {scheme} (not "
                          "group-wise); remove it or pick a group-wise scheme such as W4A16")
    return quant.group_size or preset_group


def needs_calibration_data(method: str, scheme: str | None) -> bool:
    """The method reads data, or the scheme's static activation scales are set from it."""
    return method in CALIBRATED_METHODS or preset_name(scheme) in STATIC_ACTIVATION_PRESETS


def calibrates(method: str, scheme: str | None, needs_calibration: bool) -> bool:
    """The one rule: a quantized variant reads calibration data when configured to or when it needs it."""
    return method != "none" and (needs_calibration or needs_calibration_data(method, scheme))


def uses_calibration(quant: QuantConfig) -> bool:
    return calibrates(quant.method, quant.scheme, quant.needs_calibration)


def weight_only_int(scheme: str | None) -> tuple[int, bool] | None:
    """(bits, symmetric) of a weight-only integer scheme (W4A16, W8A16_ASYM, ...), else None."""
    match = WEIGHT_ONLY_INT.match(preset_name(scheme))
    return (int(match.group(1)), match.group(2) is None) if match else None


def weight_format(scheme: str | None, unquantized_bits: int) -> tuple[float, int | None, float]:
    """(bits per weight, group size, bytes per group scale) of a preset; `unquantized_bits` for no scheme."""
    name = preset_name(scheme)
    group = PRESET_GROUP_SIZES.get(name)
    if name.startswith("NVFP4"):
        return 4, group, 1.0  # FP8 scale per 16 weights
    if name.startswith("MX"):
        return (4 if name.startswith("MXFP4") else 8), group, 1.0  # E8M0 scale per 32
    if name.startswith(("FP8", "INT8")):
        return 8, None, 0.0
    match = re.match(r"W(\d+)A", name)
    if match:
        return int(match.group(1)), group, 2.0  # bfloat16 scale per group
    return unquantized_bits, None, 0.0


def compute_dtype(scheme: str | None, base_dtype: str) -> str:
    """Matmul dtype: 8-bit activations run float8 / int8 kernels, weight-only schemes the base dtype."""
    name = preset_name(scheme)
    if name.startswith("FP8") or name.endswith("AFP8"):
        return "float8"
    if name in {"W8A8", "INT8", "W4A8"}:
        return "int8"
    return base_dtype
