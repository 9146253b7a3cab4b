"""Stand-ins for pipelines/search/candidates.py and sensitivity.py (i26b's), for the command's test:
plain schemes and `<scheme>-keep<k>` keeping layers 0..k-1 unquantized."""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass
class Candidate:
    name: str
    quant: object
    kept: list[str]
    predicted_bytes: int
    predicted_cost_per_mtok: float | None


def build_candidates(schemes, sensitivity, shape, max_kept, plain_costs):
    candidates = []
    for quant in schemes:
        for k in range(max_kept + 1):
            ignore = [*quant.ignore, *(rf"re:(.*\.)?layers\.{i}\." for i in range(k))]
            name = f"{quant.name}-keep{k}" if k else quant.name
            candidates.append(Candidate(name, dataclasses.replace(quant, name=name, ignore=ignore),
                                        [f"layer_{i}" for i in range(k)], 1000 + k, None))
    return candidates


def write_quant_yaml(candidate, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {k: v for k, v in dataclasses.asdict(candidate.quant).items() if k != "calibration"}
    path.write_text(yaml.safe_dump({"defaults": ["quant_schema"], **fields}, sort_keys=False))
    return path


def install(monkeypatch) -> None:
    candidates = types.ModuleType("pipelines.search.candidates")
    candidates.BASE, candidates.Candidate = "none", Candidate
    candidates.build_candidates, candidates.write_quant_yaml = build_candidates, write_quant_yaml
    sensitivity = types.ModuleType("pipelines.search.sensitivity")
    sensitivity.measure_sensitivity = lambda cfg, base, quant: None
    sensitivity.log_sensitivity = lambda client, run_id, measured: None
    monkeypatch.setitem(sys.modules, "pipelines.search.candidates", candidates)
    monkeypatch.setitem(sys.modules, "pipelines.search.sensitivity", sensitivity)
