"""report/index.html: flips counted as the Fidelity record counts them, a page that needs no network,
and (slow: a browser process) headless Chromium opening it from disk without console errors.

python -m pytest tests/test_report_html.py -q            (add -m slow for the Chromium test)
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.champion import choose
from pipelines.evaluate.items import write_items
from pipelines.fidelity import compare_task
from pipelines.flips import BETTER, SAME_SCORE, WORSE, answer, outcome_flips
from pipelines.records import RatioInterval
from pipelines.report import write_sweep_report

from conftest import make_outcome

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mlflow_ui_screenshot.py"
CHOICES = [" 10", " 20", " 30"]


def mc_item(doc_id: int, target: int, chosen: int) -> dict:
    loglikelihoods = [-3.0, -3.0, -3.0]
    loglikelihoods[chosen] = -1.0
    return {"doc_id": doc_id, "item_id": str(doc_id), "target": target, "prediction": chosen,
            "score": float(chosen == target), "correct": chosen == target, "choice_loglikelihoods": loglikelihoods,
            "prompt": f"Invoice {doc_id}: total =", "choices": CHOICES}


def with_items(tmp_path: Path, name: str, base_choices: list[int], variant_choices: list[int]):
    """An outcome whose single multiple-choice task has gold 0 everywhere and the given chosen options."""
    outcome = make_outcome(tmp_path, name)
    paths = []
    for role, chosen in (("base", base_choices), ("variant", variant_choices)):
        path = write_items([mc_item(i, 0, c) for i, c in enumerate(chosen)], tmp_path / f"{name}-{role}.jsonl")
        paths.append(replace(outcome.base_eval.tasks[0], items_path=str(path)))
    outcome.base_eval = replace(outcome.base_eval, tasks=[paths[0]])
    outcome.variant_eval = replace(outcome.variant_eval, tasks=[paths[1]])
    outcome.fidelity.tasks = [compare_task(paths[0], paths[1], 0.95, 200, 0)]
    return outcome


@pytest.fixture
def outcomes(tmp_path):
    # Items 0-2 right->wrong, 3-4 wrong->right, 5 wrong->other wrong, 6-7 unchanged.
    fp8 = with_items(tmp_path, "fp8", [0, 0, 0, 1, 2, 1, 0, 2], [1, 2, 1, 0, 0, 2, 0, 2])
    gptq = with_items(tmp_path, "gptq", [0, 0, 1, 0], [0, 1, 1, 0])
    return [fp8, gptq]


def test_flips_match_the_fidelity_record_and_list_same_score_changes_apart(outcomes):
    flips = outcome_flips(outcomes[0])
    task = outcomes[0].fidelity.tasks[0]
    assert [f.direction for f in flips].count(WORSE) == task.right_to_wrong == 3
    assert [f.direction for f in flips].count(BETTER) == task.wrong_to_right == 2
    assert [(f.doc_id, f.direction) for f in flips if f.direction == SAME_SCORE] == [(5, SAME_SCORE)]
    assert flips[0].prompt == "Invoice 0: total =" and flips[0].gold == "[0] 10"


def test_a_multiple_choice_answer_names_the_option_and_its_margin_over_the_next_best():
    assert answer(mc_item(0, 0, 2)) == "[2] 30 (margin 2.000 nats)"
    assert answer({"prediction": " 42", "choice_loglikelihoods": None}) == " 42"


@pytest.fixture
def page(outcomes, tmp_path) -> Path:
    files = write_sweep_report(outcomes, tmp_path / "report", [choose(outcomes, "cheapest")], [{"bench": {}}])
    return files[0]


def test_the_page_names_the_champion_and_loads_nothing_from_the_network(page):
    from plotly.offline import get_plotlyjs

    text = page.read_text()
    assert page.name == "index.html" and "Champion of tiny-llama: <span class='champion-name'>fp8</span>" in text
    assert text.count(get_plotlyjs()) == 1  # the library inline, once (its own source names its home page)
    ours = text.replace(get_plotlyjs(), "")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours) and "<link" not in ours


def test_summary_json_records_the_champion_and_its_ranking(page):
    import json

    summary = json.loads((page.parent / "summary.json").read_text())
    assert summary["champions"][0]["champion"] == "fp8" and summary["champions"][0]["runner_up"] == "gptq"
    assert [run["variant"] for run in summary["runs"]] == ["fp8", "gptq"]


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Chromium: apt-get update && apt-get install -y chromium")
def test_chromium_opens_the_page_from_disk_without_errors_and_lists_every_flip(page, outcomes, tmp_path):
    spec = importlib.util.spec_from_file_location("mlflow_ui_screenshot", SCRIPT)
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)
    flips = sum(len(outcome_flips(o)) for o in outcomes)  # 6 for fp8, 1 for gptq
    report = asyncio.run(browser.browse({"report": (page.as_uri(), [f"{flips} items shown"])}, tmp_path, 60.0))
    text = report["pages"]["report"]["text"]
    assert report["errors"] == []
    assert f"{flips} items shown" in text and "Champion of tiny-llama: fp8" in text
    assert text.count("right→wrong\t") + text.count("wrong→right\t") + text.count(f"{SAME_SCORE}\t") == flips


def test_latency_curves_show_the_slo_and_the_base_when_no_base_run_is_in_the_command(outcomes):
    from pipelines.report_charts import latency_figures

    outcomes[0].base_bench = outcomes[0].bench
    figures = latency_figures(outcomes, {"ttft_p95_ms": 200.0, "e2e_p95_ms": None})
    assert len(figures) == 1 and "TTFT" in figures[0].layout.title.text
    names = [trace.name for trace in figures[0].data if trace.showlegend is not False]
    assert names == ["base (hf)", "fp8 (hf, PROMOTE)", "gptq (hf, PROMOTE)"]
    assert figures[0].layout.shapes[0].y0 == 200.0  # the SLO line


def test_the_paired_cost_saving_is_drawn_with_its_interval_and_unpaired_variants_are_left_out(outcomes):
    from pipelines.report_charts import saving_figure

    assert saving_figure(outcomes) is None  # no variant has a paired saving: the page says so instead
    outcomes[0].cost.saving_vs_base = RatioInterval(0.25, 0.10, 0.35, 0.95, 5, "t on per-round log ratios")
    outcomes[1].cost.saving_vs_base = RatioInterval(0.5, -math.inf, math.inf, 0.95, 2, "t on per-round log ratios")
    trace = saving_figure(outcomes).data[0]
    assert list(trace.y) == ["fp8"]  # gptq's interval is unbounded: not drawn as if it were a measurement
    assert trace.x[0] == pytest.approx(25.0)
    assert (trace.error_x.arrayminus[0], trace.error_x.array[0]) == pytest.approx((15.0, 10.0))


def test_the_page_says_where_runs_are_tracked_or_that_they_are_not():
    from pipelines.report_html import _tracked_where

    mlflow = {"name": "local", "enabled": True, "backend": "mlflow", "uri": "sqlite:///m.db", "experiment": "qg"}
    assert "experiment <code>qg</code> at <code>sqlite:///m.db</code>" in _tracked_where(mlflow)
    assert _tracked_where({"name": "off", "enabled": False, "backend": "mlflow"}) == \
        "<p>Not tracked in MLflow (tracking=off).</p>"
