"""Cache entries verify themselves: a file cut, edited or added after the entry was written is found
before the entry is used, the entry is set aside with one warning naming the file, and recomputed;
the same quantization asked for twice at once is done once.

pytest tests/test_cache_verify.py   (seconds: fake quantizer, evaluator and benchmark; no model)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.config import (BenchConfig, EvalConfig, GateConfig, HardwareConfig, ModelConfig, PriceConfig,
                              QuantConfig, RunConfig)
from pipelines.models import BaseModel
from pipelines.records import BenchResult, EvalResult, TaskResult, Variant, load_record, save_record

from conftest import load_config_file, load_level

ITEMS = 400
MODEL = ModelConfig(name="tiny", source="/nowhere", dtype="float32")
HARDWARE = HardwareConfig(name="cpu-test", price_per_hour=PriceConfig(on_demand=1.0), memory_bandwidth_gb_s=20,
                          memory_gb=24)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == storage.__name__]


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def entry(tmp_path: Path) -> Path:
    directory = tmp_path / "entry"
    (directory / "items").mkdir(parents=True)
    (directory / "result.json").write_text('{"value": 1}\n')
    (directory / "items" / "t.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    storage.write_manifest(directory, {"stage": "test"})
    return directory


def test_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    directory = entry(tmp_path)
    files = storage.read_manifest(directory)["files"]
    expected = {name: {"bytes": (directory / name).stat().st_size,
                       "sha256": hashlib.sha256((directory / name).read_bytes()).hexdigest()}
                for name in ("result.json", "items/t.jsonl")}
    assert files == expected


def test_an_intact_entry_is_used_without_a_warning(tmp_path, caplog):
    directory = entry(tmp_path)
    with storage.cache_entry(directory) as manifest:
        assert manifest["stage"] == "test"
    assert warnings_of(caplog) == [] and directory.is_dir()


@pytest.mark.parametrize("damage, says", [
    (lambda d: cut(d / "items" / "t.jsonl", 12), "items/t.jsonl has 12 bytes where its manifest says 18"),
    (lambda d: (d / "result.json").write_text('{"value": 7}\n'), "result.json does not match its sha256"),
    (lambda d: (d / "result.json").unlink(), "result.json is missing"),
    (lambda d: (d / "items" / "u.jsonl").write_text("{}\n"), "items/u.jsonl is not in its manifest"),
    (lambda d: cut(d / storage.MANIFEST, 20), "quantgate-manifest.json is not valid JSON"),
], ids=["cut", "edited-same-size", "deleted", "added", "manifest-cut"])
def test_a_changed_entry_is_set_aside_with_one_warning_naming_the_file(tmp_path, caplog, damage, says):
    directory = entry(tmp_path)
    damage(directory)
    with storage.cache_entry(directory) as manifest:
        assert manifest is None
    [warning] = warnings_of(caplog)
    assert f"{directory}/{says}" in warning
    [moved] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert moved.name.startswith("entry.corrupt-") and not directory.exists()


def test_hidden_files_are_not_part_of_an_entry(tmp_path, caplog):
    directory = entry(tmp_path)
    (directory / ".DS_Store").write_bytes(b"x")
    with storage.cache_entry(directory) as manifest:
        assert manifest is not None
    assert warnings_of(caplog) == []


def test_an_entry_from_before_per_file_hashes_gets_them_once(tmp_path, caplog):
    directory = entry(tmp_path)
    old = storage.read_manifest(directory)
    del old["files"]
    (directory / storage.MANIFEST).write_text(json.dumps(old))
    with storage.cache_entry(directory) as manifest:
        assert manifest["files"]["result.json"]["bytes"] == 13
    assert warnings_of(caplog) == [] and "files" in storage.read_manifest(directory)


def test_an_old_checkpoint_manifest_is_checked_against_its_content_hash(tmp_path, caplog):
    directory = entry(tmp_path)
    content_hash = storage.hash_directory(directory)
    (directory / storage.MANIFEST).write_text(json.dumps({"content_hash": content_hash}))
    cut(directory / "result.json", 3)
    with storage.cache_entry(directory) as manifest:
        assert manifest is None
    [warning] = warnings_of(caplog)
    assert f"do not match the content_hash {content_hash}" in warning


def test_a_scratch_left_by_a_killed_writer_is_never_taken_for_the_entry(tmp_path):
    # SIGKILL skips every cleanup: what atomic_directory leaves is its scratch, never the entry.
    scratch = tmp_path / ".entry.0123456789abcdef.partial"
    scratch.mkdir()
    (scratch / "result.json").write_text("{}")
    storage.write_manifest(scratch, {"stage": "test"})
    with storage.cache_entry(tmp_path / "entry") as manifest:
        assert manifest is None


# Checkpoints: run_quantize with a fake quantizer that writes a fixed checkpoint.

def fake_checkpoint(calls: list, gate: threading.Event | None = None):
    def quantize(self, base, quant, calibration, out_dir, seed):
        calls.append(threading.current_thread().name)
        if gate is not None:
            assert gate.wait(60), "the second job never asked for the entry's lock"
        (out_dir / "config.json").write_text('{"model_type": "llama"}\n')
        (out_dir / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return quantize


@pytest.fixture
def quantize_setup(tmp_path, monkeypatch):
    from pipelines.quantize import run_quantize
    from pipelines.quantize.llmcompressor_backend import LLMCompressorQuantizer

    calls: list[str] = []
    monkeypatch.setattr(LLMCompressorQuantizer, "quantize", fake_checkpoint(calls))
    base = BaseModel("tiny", tmp_path / "base", "fingerprint", {})
    quant: QuantConfig = load_config_file("quant/fp8", QuantConfig)
    return (lambda: run_quantize(quant, base, tmp_path / "cache")), calls


@pytest.mark.parametrize("damage, file", [
    (lambda d: cut(d / "model.safetensors", 1000), "model.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes(bytes(256) * 64), "model.safetensors"),
    (lambda d: (d / "config.json").write_text('{"model_type": "gpt2"}\n'), "config.json"),
], ids=["truncated", "edited-same-size", "config-edited"])
def test_a_damaged_checkpoint_is_rebuilt_to_the_clean_one(quantize_setup, caplog, damage, file):
    quantize, calls = quantize_setup
    clean = quantize()
    damage(Path(clean.checkpoint_dir))
    again = quantize()
    [warning] = warnings_of(caplog)
    assert str(Path(clean.checkpoint_dir) / file) in warning
    assert len(calls) == 2 and not again.from_cache
    assert (again.checkpoint_dir, again.content_hash) == (clean.checkpoint_dir, clean.content_hash)
    assert quantize().from_cache and len(calls) == 2


def test_the_same_quantization_asked_for_twice_at_once_is_done_once(tmp_path, monkeypatch):
    from pipelines.quantize import run_quantize
    from pipelines.quantize.llmcompressor_backend import LLMCompressorQuantizer

    second_waiting, calls = threading.Event(), []
    monkeypatch.setattr(LLMCompressorQuantizer, "quantize", fake_checkpoint(calls, second_waiting))

    class ObservedLock(storage.FileLock):
        """The real lock; the second thread's request for it releases the first thread's quantizer."""

        def acquire(self, *args, **kwargs):
            if threading.current_thread().name == "second":
                second_waiting.set()
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr(storage, "FileLock", ObservedLock)
    base = BaseModel("tiny", tmp_path / "base", "fingerprint", {})
    quant: QuantConfig = load_config_file("quant/fp8", QuantConfig)
    results = {}

    def job():
        results[threading.current_thread().name] = run_quantize(quant, base, tmp_path / "cache")

    first = threading.Thread(target=job, name="first")
    first.start()
    while not calls:  # the first job holds the lock and is quantizing
        first.join(0.01)
    second = threading.Thread(target=job, name="second")
    second.start()
    first.join(), second.join()
    assert calls == ["first"]
    assert not results["first"].from_cache and results["second"].from_cache
    assert results["second"].content_hash == results["first"].content_hash


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


def model(name: str, content_hash: str) -> Variant:
    return Variant(name=name, base="tiny", backend="none", method="none", scheme=None, checkpoint_dir="/nowhere",
                   size_bytes=0, content_hash=content_hash, cache_key=content_hash, quantize_seconds=0.0,
                   from_cache=False)


@pytest.fixture
def evaluate_setup(tmp_path, monkeypatch):
    import pipelines.evaluate as evaluate
    from pipelines.fidelity import compare
    from pipelines.gate import decide

    calls: list[str] = []
    monkeypatch.setattr(evaluate, "_evaluate_into", fake_evaluation(calls))
    monkeypatch.setattr(evaluate, "_runner", lambda cfg, served: None)
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
    monkeypatch.setattr(pipeline, "_quantize", lambda cfg, quant, base: model(quant.name, quant.name))
    monkeypatch.setattr(pipeline, "_evaluate", unusable)
    cfg = pipeline.compose_config(["bench=off", "tracking=off", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(InputError):
        pipeline.run_variant(cfg, tmp_path / "run", preflighted=True)
    outcome = json.loads((tmp_path / "run" / "outcome.json").read_text())
    assert outcome["exit_code"] == 2 and outcome["error"].startswith("invalid input: per-item records x.jsonl")
