"""Evaluation, benchmark and per-item cache entries that changed on disk or whose writer was killed:
the rerun recomputes them and ends with the clean run's verdict; one warning names the damaged file.

pytest tests/test_cache_stages.py   (seconds: fake evaluator, benchmark and lm-eval results; no model)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.config import (BenchConfig, EvalConfig, GateConfig, HardwareConfig, ModelConfig, PriceConfig,
                              RunConfig)
from pipelines.models import BaseModel
from pipelines.records import BenchResult, EvalResult, TaskResult, load_record, save_record

from conftest import load_level
from test_cache_verify import cut, model, warnings_of

ITEMS = 400
MODEL = ModelConfig(name="tiny", source="/nowhere", dtype="float32")
HARDWARE = HardwareConfig(name="cpu-test", price_per_hour=PriceConfig(on_demand=1.0), memory_bandwidth_gb_s=20,
                          memory_gb=24)


# Evaluations: run_evaluate with a fake evaluator; the verdict is the gate's on the fidelity of base vs variant.

def fake_evaluation(calls: list):
    """Every item right for both models (the clean verdict is PROMOTE)."""
    def evaluate_into(scratch, final, runner, cfg, variant, settings, suite, include, text):
        from pipelines.evaluate.items import write_items

        calls.append(variant.name)
        items = [{"doc_id": d, "item_id": str(d), "target": "a", "prediction": "a", "score": 1.0, "correct": True,
                  "choice_loglikelihoods": None} for d in range(ITEMS)]
        write_items(items, scratch / "items" / "t.jsonl")
        task = TaskResult("t", "1", "generate_until", "exact_match", 1.0, 0.0, ITEMS, str(final / "items" / "t.jsonl"))
        result = EvalResult(model=variant.name, model_hash=variant.content_hash, settings=settings,
                            settings_hash="s", suite_hashes={"t": "suite"}, tasks=[task],
                            reference_logprobs_path=None, seconds=1.0)
        save_record(result, scratch / "eval_result.json")
        return result
    return evaluate_into


@pytest.fixture
def evaluate_setup(tmp_path, monkeypatch):
    import pipelines.evaluate as evaluate
    from pipelines.fidelity import compare
    from pipelines.gate import decide

    calls: list[str] = []
    monkeypatch.setattr(evaluate, "_evaluate_into", fake_evaluation(calls))
    monkeypatch.setattr(evaluate, "eval_runner", lambda cfg, served: None)
    cfg = RunConfig(model=MODEL, eval=EvalConfig(name="t", tasks=["t"], include_path=None, reference_text=None),
                    hardware=HARDWARE, cache_dir=str(tmp_path / "cache"))
    base, variant = model("base", "basehash"), model("fp8", "varianthash")

    def verdict() -> str:
        results = [evaluate.run_evaluate(cfg, m) for m in (base, variant)]
        fidelity = compare(*results, confidence=0.95, bootstrap_samples=200, seed=0)
        return decide(GateConfig(name="t", max_kl=None), fidelity).decision
    return verdict, calls, tmp_path / "cache" / "evals" / "varianthash"


def all_wrong(path: Path) -> None:
    """Other valid JSON: every item wrong (used silently, the verdict would be REJECT)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**item, "score": 0.0, "correct": False}) + "\n" for item in lines))


def cut_mid_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[:len(text) // 2 + 5])


def cut_at_line_boundary(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:ITEMS // 2]))


@pytest.mark.parametrize("file, damage", [
    ("items/t.jsonl", cut_mid_line), ("items/t.jsonl", cut_at_line_boundary), ("items/t.jsonl", all_wrong),
    ("eval_result.json", lambda p: cut(p, 40)),
    ("eval_result.json", lambda p: p.write_text(p.read_text().replace('"value": 1.0', '"value": 0.5'))),
], ids=["items-cut-mid-line", "items-cut-at-line-boundary", "items-edited", "record-truncated", "record-edited"])
def test_a_damaged_evaluation_gives_the_clean_verdict(evaluate_setup, caplog, file, damage):
    verdict, calls, evals = evaluate_setup
    clean = verdict()
    [directory] = [p for p in evals.iterdir() if p.is_dir()]
    damage(directory / file)
    assert clean == "PROMOTE" and verdict() == clean
    [warning] = warnings_of(caplog)
    assert str(directory / file) in warning
    assert calls == ["base", "fp8", "fp8"]  # only the damaged entry is evaluated again


# Benchmarks: run_benchmark with a fake in-process measurement.

@pytest.fixture
def bench_setup(tmp_path, monkeypatch):
    import pipelines.bench as bench

    calls: list[str] = []

    def measure(engine_class, cfg, variant, versions):
        calls.append(variant.name)
        return BenchResult(variant=variant.name, engine="hf", device="cpu", levels=[load_level()], knee_batch_size=1,
                           peak_memory_bytes=1000, memory_kind="rss", checkpoint_bytes=0)

    monkeypatch.setattr(bench, "_run_in_process", measure)
    cfg = RunConfig(model=MODEL, bench=BenchConfig(name="t"), hardware=HARDWARE, cache_dir=str(tmp_path / "cache"))
    return (lambda: bench.run_benchmark(cfg, model("fp8", "varianthash"))), calls, tmp_path / "cache" / "bench"


@pytest.mark.parametrize("damage", [
    lambda p: cut(p, 30),
    lambda p: p.write_text(p.read_text().replace('"output_tokens_per_s": 100.0', '"output_tokens_per_s": 900.0')),
], ids=["truncated", "edited"])
def test_a_damaged_benchmark_is_measured_again(bench_setup, caplog, damage):
    run, calls, root = bench_setup
    clean = run()
    [directory] = [p for p in root.iterdir() if p.is_dir()]
    damage(directory / "bench.json")
    again = run()
    [warning] = warnings_of(caplog)
    assert str(directory / "bench.json") in warning
    assert calls == ["fp8", "fp8"] and dataclasses.replace(again, from_cache=False) == clean
    assert load_record(BenchResult, directory / "bench.json") == clean


# Per-item caches (sequential runs): rewritten whole on each chunk, checked before each look.

class FakeRunner:
    """lm-eval's results for the asked documents: every item right."""

    def __init__(self, calls: list):
        self.calls = calls

    def evaluate(self, lm, manager, samples):
        self.calls.append({task: list(ids) for task, ids in samples.items()})
        return {"samples": {task: [{"doc_id": d, "filter": "none", "exact_match": 1.0, "filtered_resps": ["a"],
                                    "target": "a", "doc": {}} for d in ids] for task, ids in samples.items()},
                "configs": {task: {"output_type": "generate_until", "metric_list": [{"metric": "exact_match"}]}
                            for task in samples},
                "versions": {task: 1 for task in samples}}


@pytest.fixture
def scorer_setup(tmp_path, monkeypatch):
    from pipelines.evaluate.item_cache import ItemScorer

    calls: list[dict] = []
    cfg = RunConfig(model=MODEL, eval=EvalConfig(name="t", tasks=["t"], include_path=None, reference_text=None),
                    hardware=HARDWARE, cache_dir=str(tmp_path / "cache"))

    def scorer() -> ItemScorer:
        made = ItemScorer(cfg, model("base", "basehash"), {"tasks": ["t"]}, "suite", None)
        monkeypatch.setattr(made, "runner", lambda: FakeRunner(calls))
        monkeypatch.setattr(made, "lm", lambda: None)
        monkeypatch.setattr(made, "manager", lambda: None)
        return made
    return scorer, calls


def test_an_edited_per_item_cache_is_set_aside_and_rescored(scorer_setup, caplog):
    scorer, calls = scorer_setup
    first = scorer()
    clean = first.score({"t": [0, 1, 2]})
    first.score({"t": [3]})  # a second chunk rewrites the file and its manifest
    path = first.directory / "items" / "t.jsonl"
    all_wrong(path)
    again = scorer().score({"t": [0, 1, 2]})
    [warning] = warnings_of(caplog)
    assert str(path) in warning
    assert calls == [{"t": [0, 1, 2]}, {"t": [3]}, {"t": [0, 1, 2]}] and again == clean


def test_a_per_item_cache_from_before_manifests_is_adopted(scorer_setup, caplog):
    scorer, calls = scorer_setup
    first = scorer()
    first.score({"t": [0, 1]})
    (first.directory / storage.MANIFEST).unlink()
    scorer().score({"t": [0, 1]})
    assert calls == [{"t": [0, 1]}] and warnings_of(caplog) == []
    assert set(storage.read_manifest(first.directory)["files"]) == {"items/t.jsonl", "tasks.json"}


def test_bad_input_found_mid_run_leaves_an_outcome_saying_so(tmp_path, monkeypatch):
    import pipelines.models
    import pipelines.pipeline as pipeline
    from pipelines.errors import InputError

    def unusable(cfg, variant):
        raise InputError("per-item records x.jsonl are missing; re-run the evaluation with overwrite=true")

    monkeypatch.setattr(pipelines.models, "resolve_base", lambda model_cfg: BaseModel("tiny", tmp_path, "f", {}))
    monkeypatch.setattr(pipeline, "quantize_variant", lambda cfg, quant, base: model(quant.name, quant.name))
    monkeypatch.setattr(pipeline, "_evaluate", unusable)
    cfg = pipeline.compose_config(["bench=off", "tracking=off", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(InputError):
        pipeline.run_variant(cfg, tmp_path / "run", preflighted=True)
    outcome = json.loads((tmp_path / "run" / "outcome.json").read_text())
    assert outcome["exit_code"] == 2 and outcome["error"].startswith("invalid input: per-item records x.jsonl")


def test_an_evaluation_killed_mid_write_is_evaluated_again(evaluate_setup, monkeypatch, caplog):
    import pipelines.evaluate as evaluate

    verdict, calls, evals = evaluate_setup
    write = evaluate.write_manifest

    def killed(directory, manifest):
        (directory / "items" / "t.jsonl").write_text('{"doc_id": 0')  # half a line, then SIGINT
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        verdict()
    monkeypatch.setattr(evaluate, "write_manifest", write)
    assert verdict() == "PROMOTE" and calls == ["base", "base", "fp8"] and warnings_of(caplog) == []


def test_a_benchmark_killed_mid_write_is_measured_again(bench_setup, monkeypatch, caplog):
    import pipelines.bench as bench

    run, calls, root = bench_setup
    write = bench.write_manifest
    monkeypatch.setattr(bench, "write_manifest", lambda directory, manifest: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(bench, "write_manifest", write)
    assert not run().from_cache and calls == ["fp8", "fp8"] and warnings_of(caplog) == []
    assert not list(root.glob(".*.partial"))


def test_a_per_item_cache_killed_before_its_manifest_is_not_trusted(scorer_setup, monkeypatch, caplog):
    from pipelines.evaluate.item_cache import ItemScorer

    scorer, calls = scorer_setup
    scorer().score({"t": [0, 1]})
    write = ItemScorer._write_manifest
    monkeypatch.setattr(ItemScorer, "_write_manifest", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        scorer().score({"t": [2]})  # its items file is replaced, then the run dies before the manifest
    monkeypatch.setattr(ItemScorer, "_write_manifest", write)
    scorer().score({"t": [0, 1, 2]})
    [warning] = warnings_of(caplog)
    assert "items/t.jsonl" in warning and calls[-1] == {"t": [0, 1, 2]}
