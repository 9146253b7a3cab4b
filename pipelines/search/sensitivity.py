"""Layer sensitivity: how much each decoder layer, and each module kind, hurts when it alone is quantized.

For one scheme, every unit (decoder layer i; all attention projections; all MLP projections;
lm_head) is quantized alone in a copy of the base with llm-compressor's own data-free
`QuantizationModifier` (the scheme's number format, round-to-nearest; compressed-tensors
quantizes and dequantizes in the forward pass), and scored on the reference text
(`eval.reference_text`; the calibration texts when that is null): the mean token KL(base || unit
quantized) of the next-token distribution, with an interval at the gate's confidence, computed by
`pipelines.fidelity.reference_divergence` (the fidelity stage's KL). No suite item is spent.

GPTQ and AWQ schemes are probed with round-to-nearest in their number format: replaying the
method per unit would cost one calibration pass per unit, and the ranking asks which layers the
format hurts. Each unit is quantized in a copy of the model, so the probe needs memory for two.
Results are cached under `<cache_dir>/sensitivity/<model>/<scheme>-<key>`, keyed by the base
fingerprint, scheme, group size, text hash, window settings, dtype and library versions.
Exercised by `pytest tests/test_search_sensitivity.py tests/test_search_candidates.py`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.config import QuantConfig, RunConfig
from pipelines.errors import ConfigError, InputError
from pipelines.evaluate import effective_add_bos_token
from pipelines.evaluate.reference import compute_reference_logprobs, reference_text
from pipelines.logs import library_output_to_log
from pipelines.models import BaseModel, load_causal_lm, load_tokenizer
from pipelines.quantize.calibration import load_calibration
from pipelines.quantize.schemes import STATIC_ACTIVATION_PRESETS, preset_name
from pipelines.records import load_record, save_record, to_dict

log = logging.getLogger(__name__)

RECORD_FILE = "sensitivity.json"
LIBRARIES = ("llmcompressor", "compressed-tensors", "transformers", "torch")
# llm-compressor targets of the module kinds (Llama-family module names; `re:` is re.match on the name).
KIND_TARGETS = {"attention": r"re:(.*\.)?self_attn\.", "mlp": r"re:(.*\.)?mlp\.", "lm_head": "lm_head"}


def layer_target(index: int) -> str:
    """The llm-compressor target (and `ignore` entry) of every module in decoder layer `index`;
    the trailing dot keeps layer 3 from matching layer 30."""
    return rf"re:(.*\.)?layers\.{index}\."


@dataclass
class UnitKL:
    """One unit quantized alone: its KL(base || unit quantized) per token on the probe text, nats."""

    unit: str  # layer_<i>, attention, mlp or lm_head
    target: str  # the llm-compressor target that quantized it
    kl_mean: float
    kl_ci_low: float | None
    kl_ci_high: float | None
    top1_agreement: float


@dataclass
class Sensitivity:
    scheme: str  # compressed-tensors preset, e.g. FP8_DYNAMIC
    group_size: int | None  # quant.group_size when it replaced the preset's
    layers: list[UnitKL]  # in layer order
    kinds: list[UnitKL]
    tokens: int  # tokens the KL is averaged over
    text_source: str  # "reference" or "calibration"
    text_hash: str
    base_fingerprint: str
    confidence: float
    seconds: float  # wall time of the probe (base scoring included)

    @property
    def label(self) -> str:
        """The scheme as MLflow keys and charts name it."""
        return self.scheme if self.group_size is None else f"{self.scheme}_g{self.group_size}"

    def ranked_layers(self) -> list[int]:
        """Layer indexes, most sensitive (largest KL) first; ties by index, so the order repeats."""
        return sorted(range(len(self.layers)), key=lambda index: (-self.layers[index].kl_mean, index))


def measure_sensitivity(cfg: RunConfig, base: BaseModel, quant: QuantConfig) -> Sensitivity:
    """The sensitivity of `base` to `quant`'s scheme, per layer and per module kind (cached on disk)."""
    _check_probe_scheme(quant)
    text, source = probe_text(cfg, base, quant)
    key = sensitivity_key(cfg, base, quant, text)
    directory = Path(cfg.cache_dir) / "sensitivity" / base.name / f"{preset_name(quant.scheme)}-{key}"
    with storage.cache_entry(directory, cfg.overwrite) as manifest:
        if manifest:
            log.info("reusing cached sensitivity of %s to %s from %s", base.name, quant.scheme, directory)
            return load_record(Sensitivity, directory / RECORD_FILE)
        with storage.atomic_directory(directory) as scratch:
            result = _probe(cfg, base, quant, text, source, scratch)
            save_record(result, scratch / RECORD_FILE)
            storage.write_manifest(scratch, {"stage": "sensitivity", "model": base.name, "cache_key": key,
                                             "scheme": quant.scheme})
    return result


def sensitivity_key(cfg: RunConfig, base: BaseModel, quant: QuantConfig, text: str) -> str:
    """Only what changes the numbers: not the quant name or method (the probe is RTN of the scheme)."""
    return storage.stable_hash({
        "base": base.fingerprint, "scheme": preset_name(quant.scheme), "group_size": quant.group_size,
        "text": storage.stable_hash(text), "window": cfg.eval.reference_window,
        "max_tokens": cfg.eval.reference_max_tokens, "add_bos_token": cfg.eval.add_bos_token,
        "dtype": cfg.model.dtype, "device": cfg.hardware.device.split(":")[0], "confidence": cfg.gate.confidence,
        "resamples": cfg.eval.bootstrap_samples, "seed": cfg.seed, "versions": storage.library_versions(*LIBRARIES)})


def probe_text(cfg: RunConfig, base: BaseModel, quant: QuantConfig) -> tuple[str, str]:
    """The reference text, or the calibration texts when eval.reference_text is null; and which it is."""
    text = reference_text(cfg.eval.reference_text)
    if text is not None:
        return text, "reference"
    return "\n\n".join(load_calibration(quant.calibration, base.path)), "calibration"


def _check_probe_scheme(quant: QuantConfig) -> None:
    if not quant.scheme:
        raise ConfigError(f"quant={quant.name} has no scheme to probe sensitivity to; list quantized schemes "
                          "(e.g. fp8, w8a8, gptq)")
    if preset_name(quant.scheme) in STATIC_ACTIVATION_PRESETS:
        raise ConfigError(f"sensitivity is probed data-free, and scheme {quant.scheme} sets static activation "
                          "scales from data; probe its dynamic twin (e.g. FP8_DYNAMIC) instead")


def _probe(cfg: RunConfig, base: BaseModel, quant: QuantConfig, text: str, source: str, work: Path) -> Sensitivity:
    started = time.perf_counter()
    trusted = bool(base.config.get("auto_map"))  # resolve_base refused custom code the user did not trust
    model = load_causal_lm(base.path, cfg.model.dtype, trusted, cfg.model.allow_pickle, cfg.hardware.device)
    tokenizer = load_tokenizer(base.path, trusted)
    scorer = _Scorer(cfg, tokenizer, text, effective_add_bos_token(tokenizer, cfg.eval.add_bos_token), work)
    base_file = scorer.score(model, "base")
    layers = model.config.get_text_config().num_hidden_layers
    units = [(f"layer_{index}", layer_target(index)) for index in range(layers)] + list(KIND_TARGETS.items())
    _check_targets(model, units, base.name)
    results = [scorer.compare(base_file, unit, quantized_copy(model, quant, target), target)
               for unit, target in units]
    base_file.unlink()  # the cache keeps the numbers, not a vocabulary-wide file
    log.info("sensitivity of %s to %s: %s", base.name, quant.scheme,
             ", ".join(f"{r.unit} {r.kl_mean:.2e}" for r in results))
    return Sensitivity(scheme=preset_name(quant.scheme), group_size=quant.group_size, layers=results[:layers],
                       kinds=results[layers:], tokens=scorer.tokens, text_source=source,
                       text_hash=storage.stable_hash(text), base_fingerprint=base.fingerprint,
                       confidence=cfg.gate.confidence, seconds=round(time.perf_counter() - started, 3))


def _check_targets(model, units: list[tuple[str, str]], name: str) -> None:
    """Every unit names modules: a target matching nothing would read as a unit that never hurts."""
    from compressed_tensors.utils.match import match_named_modules

    empty = [unit for unit, target in units if next(match_named_modules(model, [target]), None) is None]
    if empty:
        raise InputError(f"model {name} has no modules for {', '.join(empty)}: the sensitivity probe expects "
                         "Llama-style module names (layers.<i>.self_attn.*, layers.<i>.mlp.*, lm_head)")


class _Scorer:
    """Scores models on the probe text the way the evaluate stage scores its reference text."""

    def __init__(self, cfg: RunConfig, tokenizer, text: str, add_bos_token: bool, work: Path) -> None:
        self.cfg, self.tokenizer, self.text, self.add_bos_token, self.work = cfg, tokenizer, text, add_bos_token, work
        self.tokens = 0

    def score(self, model, name: str) -> Path:
        ev = self.cfg.eval
        return compute_reference_logprobs(model, self.tokenizer, self.text, window=ev.reference_window,
                                          max_tokens=ev.reference_max_tokens, batch_size=ev.batch_size,
                                          add_bos_token=self.add_bos_token, out_path=self.work / f"{name}.safetensors")

    def compare(self, base_file: Path, unit: str, model, target: str) -> UnitKL:
        from pipelines.fidelity import reference_divergence  # scipy and statsmodels

        unit_file = self.score(model, unit)
        divergence = reference_divergence(str(base_file), str(unit_file), self.cfg.gate.confidence,
                                          self.cfg.eval.bootstrap_samples, self.cfg.seed)
        unit_file.unlink()
        self.tokens = divergence.tokens
        return UnitKL(unit=unit, target=target, kl_mean=divergence.kl_mean, kl_ci_low=divergence.kl_ci_low,
                      kl_ci_high=divergence.kl_ci_high, top1_agreement=divergence.top1_agreement)


def quantized_copy(model, quant: QuantConfig, target: str):
    """A copy of `model` with only the modules `target` matches quantized in `quant`'s scheme."""
    with library_output_to_log("llmcompressor"):  # its import and lifecycle print to stdout
        from compressed_tensors.quantization import preset_name_to_scheme
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import QuantizationModifier

        scheme = preset_name_to_scheme(preset_name(quant.scheme), [target])
        if quant.group_size is not None:
            scheme.weights.group_size = quant.group_size
        unit = copy.deepcopy(model)
        oneshot(model=unit, recipe=[QuantizationModifier(config_groups={"group_0": scheme}, ignore=[])])
    return unit


def sensitivity_metrics(sensitivity: Sensitivity) -> dict[str, float]:
    """MLflow metrics: sensitivity/<scheme>/<unit>_kl, with _ci_low / _ci_high where bounded."""
    metrics: dict[str, float] = {}
    for unit in sensitivity.layers + sensitivity.kinds:
        prefix = f"sensitivity/{sensitivity.label}/{unit.unit}_kl"
        metrics[prefix] = unit.kl_mean
        metrics.update({f"{prefix}_ci_{side}": value for side, value in
                        (("low", unit.kl_ci_low), ("high", unit.kl_ci_high)) if value is not None})
    return metrics


def log_sensitivity(client: Any, run_id: str, sensitivity: Sensitivity) -> None:
    """Log the sensitivity to an MLflow run: its metrics and the record as sensitivity/<scheme>.json."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [Metric(key, value, stamp, 0) for key, value in sensitivity_metrics(sensitivity).items()]
    client.log_batch(run_id, metrics=metrics)
    client.log_dict(run_id, to_dict(sensitivity), f"sensitivity/{sensitivity.label}.json")
