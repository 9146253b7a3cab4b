"""Cache entries verify themselves (pipelines/storage.py): a file cut, edited or added after the entry
was written is found before the entry is used, the entry is set aside with one warning naming the
file, and recomputed; the same quantization asked for twice at once is done once. The evaluation,
benchmark and per-item entries: tests/test_cache_stages.py.

pytest tests/test_cache_verify.py   (seconds: a fake quantizer; no model)
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.config import QuantConfig
from pipelines.models import BaseModel
from pipelines.records import Variant

from conftest import load_config_file


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


def old_entry_with_reference(tmp_path: Path) -> Path:
    """An entry as the previous version wrote it: a manifest without the table of files."""
    import torch
    from safetensors.torch import save_file

    directory = entry(tmp_path)
    save_file({"logprobs": torch.zeros(4, 8)}, str(directory / "reference.safetensors"))
    (directory / storage.MANIFEST).write_text(json.dumps({"stage": "test"}))
    return directory


@pytest.mark.parametrize("damage, says", [
    (lambda d: cut(d / "result.json", 5), "result.json does not parse"),
    (lambda d: cut(d / "items" / "t.jsonl", 12), "items/t.jsonl does not parse"),
    (lambda d: cut(d / "reference.safetensors", 100), "reference.safetensors has 100 bytes where its header says"),
], ids=["json-cut", "jsonl-cut-mid-line", "safetensors-cut"])
def test_an_old_entry_with_a_cut_file_is_set_aside(tmp_path, caplog, damage, says):
    directory = old_entry_with_reference(tmp_path)
    damage(directory)
    with storage.cache_entry(directory) as manifest:
        assert manifest is None
    [warning] = warnings_of(caplog)
    assert f"{directory}/{says}" in warning


def test_an_old_whole_entry_is_adopted(tmp_path, caplog):
    directory = old_entry_with_reference(tmp_path)
    with storage.cache_entry(directory) as manifest:
        assert set(manifest["files"]) == {"result.json", "items/t.jsonl", "reference.safetensors"}
    assert warnings_of(caplog) == [] and storage.read_manifest(directory)["files"] == manifest["files"]


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


def test_the_same_quantization_asked_for_twice_at_once_is_done_once(tmp_path, monkeypatch, caplog):
    from pipelines.quantize import run_quantize
    from pipelines.quantize.llmcompressor_backend import LLMCompressorQuantizer

    caplog.set_level(logging.INFO, logger=storage.__name__)
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
    waits = [r for r in caplog.records if r.getMessage().startswith("waiting for another job")]
    assert [r.threadName for r in waits] == ["second"]


def model(name: str, content_hash: str) -> Variant:
    return Variant(name=name, base="tiny", backend="none", method="none", scheme=None, checkpoint_dir="/nowhere",
                   size_bytes=0, content_hash=content_hash, cache_key=content_hash, quantize_seconds=0.0,
                   from_cache=False)
