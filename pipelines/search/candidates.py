"""Candidate recipes: each listed scheme with its k most sensitive layers kept at a higher precision.

For every scheme (a QuantConfig) and k = 0..max_kept, the k layers that `Sensitivity.ranked_layers`
puts first are kept
  - unquantized: their modules join `quant.ignore` (`re:(.*\\.)?layers\\.<i>\\.`); llm-compressor
    writes them dense and lists their names in the checkpoint's `ignore`, so vLLM serves it as is;
  - or, in a weight-only scheme below 8 bits whose method takes precision overrides (rtn, gptq), at
    W8A8: a second config group targeting those layers (`quant.precision_overrides`).
k = 0 is the plain scheme itself, unchanged (same name, same cache key, same checkpoint).

Predictions, labelled as such wherever shown:
  - bytes: `pipelines.sizing.variant_bytes` of the plain scheme, with each kept layer's decoder
    Linear weights (total / layers: every decoder layer of a Llama-style model has the same shape)
    moved to the kept precision's bits and scales (`schemes.weight_format`);
  - $ per 1M output tokens: linear in the fraction of decoder Linear weights in each format,
    between the base's measured cost and each plain scheme's (plain_costs, keyed by quant name; the
    base under `BASE`): cost = base + sum over formats of fraction x (plain cost - base). The
    assumption: decoding reads every weight once per token, so serving time follows the share of
    weights in each format; kernel switches inside a mixed model are not counted.
Candidates are ordered by predicted cost, then bytes, then name: the search tries the cheapest first.
Exercised by `pytest tests/test_search_candidates.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.config import PrecisionOverride, QuantConfig
from pipelines.errors import ConfigError
from pipelines.quantize.schemes import OVERRIDE_METHODS, preset_name, uses_calibration, weight_format, weight_only_int
from pipelines.search.sensitivity import Sensitivity, layer_target
from pipelines.shape import DTYPE_BYTES, ModelShape
from pipelines.sizing import variant_bytes
from pipelines.storage import atomic_write_text

# plain_costs key of the base model's measured cost (the quant=none variant).
BASE = "none"
# The higher precision kept layers get inside a weight-only recipe below 8 bits.
OVERRIDE_SCHEME = "W8A8"


@dataclass
class Candidate:
    name: str  # e.g. "fp8-keep2"; a plain scheme is a candidate with kept=[]
    quant: QuantConfig  # an ordinary quant config
    kept: list[str]  # units kept at higher precision (layer_<i>), most sensitive first
    predicted_bytes: int  # checkpoint weight bytes, predicted
    predicted_cost_per_mtok: float | None  # $ per 1M output tokens, predicted; None: no measured costs


def build_candidates(schemes: list[QuantConfig], sensitivity: dict[str, Sensitivity], shape: ModelShape,
                     max_kept: int, plain_costs: dict[str, float] | None) -> list[Candidate]:
    """Every scheme with 0..max_kept of its most sensitive layers kept, cheapest predicted first.

    `shape` is the base's (`sizing.model_size`): its Linear and lm_head parameter counts are set."""
    if max_kept < 0:
        raise ConfigError(f"max_kept={max_kept} must be >= 0")
    missing = [quant.name for quant in schemes if quant.name not in sensitivity]
    if missing:
        raise ValueError(f"no sensitivity measured for {', '.join(missing)}")
    costs = _PlainCosts(plain_costs or {}, schemes)
    candidates = [candidate for quant in schemes
                  for candidate in _scheme_candidates(quant, sensitivity[quant.name], shape, max_kept, costs)]
    return sorted(candidates, key=_cheapest_first)


def _cheapest_first(candidate: Candidate) -> tuple:
    cost = candidate.predicted_cost_per_mtok
    return (cost is None, cost or 0.0, candidate.predicted_bytes, candidate.name)


def _scheme_candidates(quant: QuantConfig, sensitivity: Sensitivity, shape: ModelShape, max_kept: int,
                       costs: _PlainCosts) -> list[Candidate]:
    ranked = sensitivity.ranked_layers()
    recipes = [(quant, [])]
    for k in range(1, min(max_kept, len(ranked)) + 1):
        kept = ranked[:k]
        targets = [layer_target(index) for index in kept]
        recipes.append((dataclasses.replace(quant, name=f"{quant.name}-keep{k}", ignore=[*quant.ignore, *targets]),
                        kept))
        if takes_override(quant):
            override = PrecisionOverride(targets=targets, scheme=OVERRIDE_SCHEME)
            recipes.append((dataclasses.replace(quant, name=f"{quant.name}-keep{k}-{OVERRIDE_SCHEME.lower()}",
                                                precision_overrides=[*quant.precision_overrides, override]), kept))
    return [_candidate(recipe, quant, kept, shape, costs) for recipe, kept in recipes]


def takes_override(quant: QuantConfig) -> bool:
    """A weight-only integer scheme below 8 bits whose recipe takes a second config group."""
    weight_only = weight_only_int(quant.scheme)
    return weight_only is not None and weight_only[0] < 8 and quant.method in OVERRIDE_METHODS


def _candidate(recipe: QuantConfig, plain: QuantConfig, kept: list[int], shape: ModelShape,
               costs: _PlainCosts) -> Candidate:
    kept_scheme = OVERRIDE_SCHEME if recipe.precision_overrides != plain.precision_overrides else None
    kept_fraction = len(kept) / shape.layers
    return Candidate(name=recipe.name, quant=recipe, kept=[f"layer_{index}" for index in kept],
                     predicted_bytes=predicted_bytes(shape, plain, len(kept), kept_scheme),
                     predicted_cost_per_mtok=costs.predict(plain, kept_fraction, kept_scheme))


def predicted_bytes(shape: ModelShape, plain: QuantConfig, kept_layers: int, kept_scheme: str | None) -> int:
    """The plain scheme's bytes with `kept_layers` layers' Linear weights in `kept_scheme` (None: the base dtype)."""
    layer_weights = shape.linear_params / shape.layers
    moved = bytes_per_weight(shape, kept_scheme, None) - bytes_per_weight(shape, plain.scheme, plain.group_size)
    return int(round(variant_bytes(shape, plain) + kept_layers * layer_weights * moved))


def bytes_per_weight(shape: ModelShape, scheme: str | None, group_size: int | None) -> float:
    """Bytes one weight takes in `scheme` (None: unquantized), its share of the group scale included."""
    bits, group, scale_bytes = weight_format(scheme, 8 * DTYPE_BYTES[shape.dtype])
    group = group_size or group
    return bits / 8 + (scale_bytes / group if group else 0.0)


class _PlainCosts:
    """The measured $ / 1M output tokens of the base and of each plain scheme, for interpolation."""

    def __init__(self, costs: dict[str, float], schemes: list[QuantConfig]) -> None:
        self.costs, self.schemes = costs, schemes

    def predict(self, plain: QuantConfig, kept_fraction: float, kept_scheme: str | None) -> float | None:
        base, scheme = self.costs.get(BASE), self.costs.get(plain.name)
        kept = base if kept_scheme is None else self._of_scheme(kept_scheme)
        if base is None or scheme is None or kept is None:
            return None
        return base + (1 - kept_fraction) * (scheme - base) + kept_fraction * (kept - base)

    def _of_scheme(self, scheme: str) -> float | None:
        """The measured cost of a listed plain scheme in this format (e.g. w8a8 for W8A8)."""
        return next((self.costs[quant.name] for quant in self.schemes
                     if preset_name(quant.scheme) == scheme and not quant.precision_overrides
                     and quant.name in self.costs), None)


def write_quant_yaml(candidate: Candidate, path: Path) -> Path:
    """The candidate as a conf/quant YAML that composes exactly `candidate.quant`: at
    <folder>/quant/<name>.yaml, `python -m pipelines.run quant=<path>` (or quant=<name> with
    hydra.searchpath=[file://<folder>])."""
    fields = dataclasses.asdict(candidate.quant)
    if not uses_calibration(candidate.quant):
        fields.pop("calibration")
    fields = {key: value for key, value in fields.items()
              if value or key in ("name", "backend", "method", "scheme", "ignore")}
    at = ", ".join(f"{o.scheme} for {len(o.targets)} layer(s)" for o in candidate.quant.precision_overrides)
    kept = (", ".join(candidate.kept) + f" ({at or 'unquantized'})") if candidate.kept else "none"
    cost = (f"${candidate.predicted_cost_per_mtok:.4g} / 1M output tokens"
            if candidate.predicted_cost_per_mtok is not None else "cost not predicted")
    header = (f"# python -m pipelines.run quant={path}   ({candidate.quant.scheme}; kept at higher precision: "
              f"{kept})\n# predicted, not measured: {candidate.predicted_bytes} weight bytes, {cost}\n")
    body = yaml.safe_dump({"defaults": ["quant_schema"], **fields}, sort_keys=False)
    return atomic_write_text(Path(path), header + body)
