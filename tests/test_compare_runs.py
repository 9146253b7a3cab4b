"""benchmarks/compare_runs.py, the before/after check for refactors, on hand-made run folders.

    pytest tests/test_compare_runs.py
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"
OUTCOME = {
    "variant_name": "fp8", "exit_code": 1, "error": None, "output_dir": "/runs/17-35-13-fp8",
    "verdict": {"decision": "INCONCLUSIVE", "reasons": ["blocking accuracy[t] INCONCLUSIVE: ..."]},
    "fidelity": {"variant": "fp8", "tasks": [{"task": "t", "delta": -0.0333, "right_to_wrong": 4}]},
    "variant": {"content_hash": "d16b", "cache_key": "3794", "checkpoint_dir": ".cache/quantgate/variants/x"},
    "base_variant": {"content_hash": "e29e", "checkpoint_dir": "/checkout-a/pipelines/embedded/tiny-llama",
                     "quantize_seconds": 0.0},
    "bench": {"levels": [{"batch_size": 1, "output_tokens_per_s": 52.2}]},
    "cost": {"measured": {"usd_per_million_output_tokens": 0.48}},
}


@pytest.fixture(scope="module")
def compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_side(root: Path, outcome: dict, plan: str = "plan: 70.55 B parameters\n") -> Path:
    root.mkdir()
    (root / "checkout").write_text(f"/checkout-{root.name}\n")
    for command, code in (("main", 1), ("sweep", 1), ("plan", 0)):
        (root / command).mkdir(parents=True)
        (root / command / "exit_code").write_text(f"{code}\n")
    (root / "plan" / "stdout.txt").write_text(plan)
    run = root / "main" / "outputs" / "run"
    run.mkdir(parents=True)
    (run / "outcome.json").write_text(json.dumps(outcome))
    return root


def test_timings_the_run_folder_and_the_checkout_path_may_differ(compare_runs, tmp_path, capsys):
    after = copy.deepcopy(OUTCOME)
    after["bench"]["levels"][0]["output_tokens_per_s"] = 40.1
    after["cost"]["measured"]["usd_per_million_output_tokens"] = 0.61
    after["output_dir"] = "/runs/17-43-01-fp8"
    after["base_variant"]["checkpoint_dir"] = "/checkout-b/pipelines/embedded/tiny-llama"
    after["variant"]["calibration_hash"] = "ab12"  # a field the refactor added: listed, not a difference
    code = compare_runs.main([str(write_side(tmp_path / "a", OUTCOME)), str(write_side(tmp_path / "b", after))])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "fidelity JSON byte-identical" in printed and "2 values differ" in printed
    assert "only after: variant.calibration_hash (1)" in printed


@pytest.mark.parametrize("change", ["fidelity", "verdict", "hash", "plan"])
def test_a_difference_beyond_timings_is_named_and_exits_1(compare_runs, tmp_path, capsys, change):
    after, plan = copy.deepcopy(OUTCOME), "plan: 70.55 B parameters\n"
    if change == "fidelity":
        after["fidelity"]["tasks"][0]["right_to_wrong"] = 5
    elif change == "verdict":
        after["verdict"]["decision"] = "REJECT"
    elif change == "hash":
        after["variant"]["cache_key"] = "0000"
    else:
        plan = "plan: 70.56 B parameters\n"
    code = compare_runs.main([str(write_side(tmp_path / "a", OUTCOME)), str(write_side(tmp_path / "b", after, plan))])
    printed = capsys.readouterr().out
    assert code == 1
    expected = {"fidelity": "fidelity JSON DIFFERS", "verdict": "DIFFERS verdict.decision",
                "hash": "DIFFERS variant.cache_key", "plan": "plan output DIFFERS"}[change]
    assert expected in printed
