"""Cheap up-front checks that a quant config can work on a model, without importing torch.

Called once per config by preflight (`check_quant_compatible`, which runs `check_backend`), so
`python -m pipelines.run quant=gptq quant.backend=autogptq` fails in milliseconds with one line
instead of minutes into a run; `run_quantize` trusts a config that passed. What a backend can write
is its own knowledge: the `Quantizer` protocol's `check(quant)` and `check_compatible(model_config,
quant)`, which these functions call; the facts about schemes they check are in schemes.py.
"""

from __future__ import annotations

from typing import Any

from pipelines.config import QuantConfig
from pipelines.errors import ConfigError
from pipelines.quantize.legacy import LEGACY_BACKENDS, legacy_backend_error
from pipelines.quantize.schemes import METHODS, group_size
from pipelines.registry import QUANTIZERS, did_you_mean, resolve

# "none" is handled by run_quantize itself (the base is the variant), so it has no registry line.
BACKENDS = ["none", *QUANTIZERS]


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
        # Each backend checks its own limits up front (its module imports nothing heavy).
        resolve(QUANTIZERS, "quantization backend", quant.backend).check(quant)


def check_quant_compatible(model_config: dict[str, Any], quant: QuantConfig) -> None:
    """Raise ConfigError when `quant` cannot work on a model with this config.json, before any work."""
    check_backend(quant)
    if quant.method == "none":
        return
    resolve(QUANTIZERS, "quantization backend", quant.backend).check_compatible(model_config, quant)


def check_groups_fit(model_config: dict[str, Any], quant: QuantConfig) -> None:
    """The scheme's (or quant.group_size's) groups fit the model's Linear input widths."""
    group = group_size(quant)
    if group is not None:
        check_group_divides(model_config, group)


def check_group_divides(model_config: dict[str, Any], group: int) -> None:
    """Group-wise quantization needs the group size to divide every Linear input width."""
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
