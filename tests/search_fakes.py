"""Stand-ins for the costly parts of pipelines/search/candidates.py and sensitivity.py, for the
command's test: a made-up sensitivity (no probe) and candidates that keep layers 0..k-1 unquantized
(plain schemes first, k = 0..max_kept); the rest (Candidate, write_quant_yaml, log_sensitivity) is real."""

from __future__ import annotations

import dataclasses

from pipelines.search import candidates, sensitivity
from pipelines.search.sensitivity import Sensitivity, UnitKL, layer_target


def made_sensitivity(cfg, base, quant) -> Sensitivity:
    layers = [UnitKL(f"layer_{i}", layer_target(i), 0.001 / (i + 1), None, None, 0.99) for i in range(4)]
    return Sensitivity(scheme=quant.scheme, group_size=None, layers=layers, kinds=[], tokens=1, text_source="reference",
                       text_hash="h", base_fingerprint="f", confidence=0.95, seconds=0.0)


def build_candidates(schemes, sensitivities, shape, max_kept, plain_costs):
    made = []
    for quant in schemes:
        for k in range(max_kept + 1):
            name = f"{quant.name}-keep{k}" if k else quant.name
            ignore = [*quant.ignore, *(layer_target(i) for i in range(k))]
            made.append(candidates.Candidate(name, dataclasses.replace(quant, name=name, ignore=ignore),
                                             [f"layer_{i}" for i in range(k)], 1000 + k, None))
    return made


def install(monkeypatch) -> None:
    monkeypatch.setattr(sensitivity, "measure_sensitivity", made_sensitivity)
    monkeypatch.setattr(candidates, "build_candidates", build_candidates)
