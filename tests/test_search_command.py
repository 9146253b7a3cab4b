"""The search command end to end on the embedded model (pipelines/search/__main__.py), with a made-up
sensitivity and layer-keeping candidates (tests/search_fakes.py): a tiny item budget cannot certify."""

from __future__ import annotations

import json
import logging

import pytest

from pipelines import exit_codes
from pipelines.records import load_record
from pipelines.search.procedure import EVERY_CANDIDATE, SearchResult
from search_fakes import install


@pytest.mark.slow
def test_search_ends_uncertified_with_its_table_recipe_and_child_runs(tmp_path, monkeypatch, capsys):
    """20 items per task: the plain fp8 candidate is INCONCLUSIVE on its 10 search items, so nothing
    is confirmed, the command exits 1, the best recipe is written and reruns as quant=<file>, and the
    MLflow parent holds one child per candidate, and the sensitivity, with no model version registered."""
    from mlflow import MlflowClient

    from pipelines.pipeline import compose_config
    from pipelines.search.__main__ import _search

    install(monkeypatch)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handlers = list(logging.getLogger().handlers)
    try:
        code = _search(["quant=[fp8]", "search.max_kept=0", f"search.output_dir={tmp_path / 'out'}",
                        "eval.limit=20", "bench=off", f"cache_dir={tmp_path / 'cache'}", f"tracking.uri={store}",
                        f"tracking.artifact_location={tmp_path / 'artifacts'}"])
    finally:
        for handler in set(logging.getLogger().handlers) - set(handlers):
            logging.getLogger().removeHandler(handler)
    printed = capsys.readouterr().out
    assert code == exit_codes.VERDICT_BLOCKS
    assert "no candidate passed the search; best found: fp8 (INCONCLUSIVE" in printed
    summary = load_record(SearchResult, tmp_path / "out" / "search_summary.json")
    assert [t.candidate for t in summary.trials] == ["fp8"]
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    search_side = sum(len(task["search"]) for task in split["tasks"].values())
    assert summary.search_items == summary.grid_items == search_side  # one candidate, its whole search side
    assert summary.confirmation is None and summary.stop_reason == EVERY_CANDIDATE
    # The reference text's windows split too: the search trial's KL is on the head alone.
    head = split["reference_windows"]["search"]
    assert head[0] == 0 and head[1] < split["reference_windows"]["confirmation"][1]
    assert (tmp_path / "out" / "search" / "fp8" / "reference-variant.safetensors").is_file()
    recipe = tmp_path / "out" / "conf" / "quant" / "fp8.yaml"
    assert compose_config([f"quant={recipe}", "tracking=off"]).quant.ignore == ["lm_head"]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("quantgate").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 2
    assert parents[0].data.metrics["sensitivity/FP8_DYNAMIC/layer_0_kl"] == pytest.approx(0.001)
    assert "Sensitivity to FP8_DYNAMIC" in (tmp_path / "out" / "search_candidates.html").read_text()
    assert client.search_registered_models() == []
