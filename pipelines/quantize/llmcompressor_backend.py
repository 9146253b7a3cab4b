"""llm-compressor backend: one-shot recipes written as compressed-tensors checkpoints.

`python -m pipelines.run quant=fp8` (or w8a8, awq, gptq, canary-w2). Recipes by `quant.method`:
  rtn              QuantizationModifier            (data-free round-to-nearest; FP8_DYNAMIC, W2A16, ...)
  gptq             GPTQModifier
  awq              AWQModifier + QuantizationModifier
  smoothquant_gptq SmoothQuantModifier + GPTQModifier
`quant.params` go to the method's own modifier, the first one listed (e.g. GPTQ `dampening_frac`,
AWQ `duo_scaling`, SmoothQuant `smoothing_strength`); an unknown key is a ConfigError.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from pipelines.config import QuantConfig
from pipelines.errors import ConfigError
from pipelines.logs import library_output_to_log
from pipelines.models import BaseModel, load_causal_lm, load_tokenizer
from pipelines.quantize.compat import check_groups_fit
from pipelines.quantize.schemes import check_scheme

log = logging.getLogger(__name__)

class LLMCompressorQuantizer:
    libraries = ("llmcompressor", "compressed-tensors", "transformers", "torch")

    @staticmethod
    def check(quant: QuantConfig) -> None:
        """Preflight: the scheme is a compressed-tensors preset and has the calibration data it needs."""
        check_scheme(quant)

    @staticmethod
    def check_compatible(model_config: dict[str, Any], quant: QuantConfig) -> None:
        """The preset's (or quant.group_size's) groups fit the model's Linear input widths."""
        check_groups_fit(model_config, quant)

    def quantize(self, base: BaseModel, quant: QuantConfig, calibration: list[str], out_dir: Path,
                 seed: int) -> None:
        import torch

        with library_output_to_log("llmcompressor"):  # its import logs to stdout ("No accelerator available!")
            from llmcompressor import oneshot

        torch.manual_seed(seed)
        recipe = build_recipe(quant)
        # resolve_base refuses custom code (auto_map) unless the user trusted it, so its presence means trust.
        trusted = bool(base.config.get("auto_map"))
        log.info("loading base %s from %s", base.name, base.path)
        model = load_causal_lm(base.path, trust_remote_code=trusted)
        tokenizer = load_tokenizer(base.path, trust_remote_code=trusted)
        log.info("quantizing %s: %s", base.name, " + ".join(type(m).__name__ for m in recipe))
        with _skip_pinning_without_accelerator() if quant.method == "awq" else nullcontext():
            oneshot(model=model, tokenizer=tokenizer, recipe=recipe, **_calibration_args(quant, calibration))
        log.info("saving compressed checkpoint to %s", out_dir)
        model.save_pretrained(out_dir, save_compressed=True)
        tokenizer.save_pretrained(out_dir)


def build_recipe(quant: QuantConfig) -> list[Any]:
    """The llm-compressor modifiers for `quant.method`, the method's own modifier first."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    quantize_args = {"targets": ["Linear"], "ignore": list(quant.ignore), "config_groups": _config_groups(quant)}
    params = dict(quant.params)
    if quant.method == "rtn":
        return [_modifier(QuantizationModifier, {**quantize_args, **params})]
    if quant.method == "gptq":
        return [_modifier(GPTQModifier, {**quantize_args, **params})]
    if quant.method == "awq":
        return [_modifier(AWQModifier, params), QuantizationModifier(**quantize_args)]
    if quant.method == "smoothquant_gptq":
        return [_modifier(SmoothQuantModifier, params), GPTQModifier(**quantize_args)]
    raise ConfigError(f"quant.method={quant.method} is not an llm-compressor recipe; use rtn, gptq, awq "
                      "or smoothquant_gptq")


def _modifier(cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"quant.params rejected by {cls.__name__}: {where}: {first['msg']}; "
                          f"see llm-compressor's {cls.__name__} for its fields") from error


def _config_groups(quant: QuantConfig) -> dict[str, Any]:
    """The preset scheme, with `quant.group_size` replacing the preset's group size (128) when set, then
    one group per precision override: compressed-tensors gives a module matched by a name or `re:`
    target that group's scheme rather than the class target "Linear" (utils/match.py `match_targets`)."""
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = preset_name_to_scheme(quant.scheme, ["Linear"])
    if quant.group_size is not None:
        scheme.weights.group_size = quant.group_size
    overrides = {f"group_{index}": preset_name_to_scheme(override.scheme, list(override.targets))
                 for index, override in enumerate(quant.precision_overrides, start=1)}
    return {"group_0": scheme, **overrides}


def _calibration_args(quant: QuantConfig, calibration: list[str]) -> dict[str, Any]:
    if not calibration:
        return {}
    from datasets import Dataset

    return {
        "dataset": Dataset.from_dict({"text": calibration}),
        "max_seq_length": quant.calibration.max_seq_length,
        "num_calibration_samples": len(calibration),
        # The texts were already chosen (first num_samples); keep their order so runs repeat exactly.
        "shuffle_calibration_samples": False,
    }


@contextmanager
def _skip_pinning_without_accelerator() -> Iterator[None]:
    """Make AWQ run on CPU-only torch for the duration of one oneshot call.

    llm-compressor 0.14's AWQModifier pins its cached activations unconditionally
    (`IntermediatesCache.pin_memory`, llmcompressor/pipelines/cache.py) before its scale search;
    without an accelerator torch raises "Cannot access accelerator device when none is available".
    Pinning only speeds host-to-device copies, so with no device to copy to it is skipped.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original
