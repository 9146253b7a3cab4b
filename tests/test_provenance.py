"""Records carry resolved provenance, so tracking and costing never go back to the config or config.json.

    pytest tests/test_provenance.py
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import make_outcome
from evalsuites import SUITES_DIR
from pipelines.bench import bench_key
from pipelines.cli import compose_all
from pipelines.embedded import CALIBRATION_TEXT
from pipelines.evaluate import with_provenance as eval_with_provenance
from pipelines.models import resolve_base
from pipelines.pipeline import price
from pipelines.plan import build_plan
from pipelines.preflight import preflight
from pipelines.quantize import run_quantize, with_provenance
from pipelines.records import EvalResult, Variant, load_record, save_record
from pipelines.shape import read_model_shape
from pipelines.storage import hash_files
from pipelines.track import lineage

EMBEDDED = Path(__file__).resolve().parents[1] / "pipelines" / "embedded" / "tiny-llama"


@pytest.fixture
def config_json_reads(monkeypatch) -> list[Path]:
    """Every read of a file named config.json, by any module."""
    reads, original = [], Path.read_text

    def counting(path: Path, *args, **kwargs):
        if path.name == "config.json":
            reads.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    return reads


def embedded_variant() -> Variant:
    return Variant(name="fp8", base="tiny-llama", backend="llmcompressor", method="fp8", scheme="FP8_DYNAMIC",
                   checkpoint_dir=str(EMBEDDED), size_bytes=1, content_hash="h", cache_key="k", quantize_seconds=0.0,
                   from_cache=True)


def test_the_plan_reads_config_json_once(config_json_reads):
    (cfg,) = compose_all(["quant=gptq"])
    build_plan(cfg)
    assert config_json_reads == [EMBEDDED / "config.json"]


def test_preflight_reads_the_base_config_json_once(config_json_reads, tmp_path):
    (cfg,) = compose_all(["quant=gptq", "tracking=off", f"cache_dir={tmp_path}"])
    preflight(cfg)  # the quant check, the plan and the checkpoint check share one read
    assert config_json_reads == [EMBEDDED / "config.json"]


def test_the_quantize_stage_reads_the_shape_once_and_the_cost_stage_not_again(config_json_reads, tmp_path):
    (cfg,) = compose_all(["quant=none", f"cache_dir={tmp_path}"])
    base = resolve_base(cfg.model)
    baseline = run_quantize(cfg.quant, base, tmp_path)  # the base's config.json, read by resolve_base, is reused
    variant = with_provenance(embedded_variant(), cfg.quant)  # a written checkpoint's: read here
    assert len(config_json_reads) == 2
    bench = make_outcome(tmp_path).bench
    bench.levels = [dataclasses.replace(level, e2e_mean_ms=400.0, itl_mean_ms=10.0) for level in bench.levels]
    for each in (baseline, variant):
        assert price(cfg, bench, each).measured is not None
    assert len(config_json_reads) == 2
    assert baseline.shape == variant.shape == read_model_shape(EMBEDDED)


def test_lineage_comes_from_the_records_without_the_config(monkeypatch, tmp_path):
    outcome = make_outcome(tmp_path)

    def no_config(*args, **kwargs):
        raise AssertionError("lineage resolved a config value")

    monkeypatch.setattr("pipelines.embedded.resolve_source", no_config)
    monkeypatch.setattr("pipelines.evaluate.suites.resolve_include_path", no_config)
    refs = {ref.name: ref for ref in lineage.dataset_refs(outcome)}
    assert (refs["qg_invoice"].source, refs["qg_invoice"].digest) == (str(SUITES_DIR), "abc")
    assert (refs["calibration.txt"].source, refs["calibration.txt"].digest) == (
        str(CALIBRATION_TEXT.resolve()), hash_files([CALIBRATION_TEXT]))
    assert refs["reference.txt"].digest == "ref0123" and Path(refs["reference.txt"].source).is_file()


def test_a_hub_calibration_set_is_named_by_its_dataset(tmp_path):
    variant = dataclasses.replace(make_outcome(tmp_path).variant, calibration_source="hf:org/chats:default:train",
                                  calibration_hash="c0ffee")
    ref = lineage._calibration_ref(variant)
    assert (ref.name, ref.source, ref.digest) == ("org/chats:default:train", "https://huggingface.co/datasets/org/chats",
                                                  "c0ffee")


def test_the_evaluate_stage_states_suite_folder_and_reference_text(tmp_path):
    (cfg,) = compose_all([])
    result = eval_with_provenance(make_outcome(tmp_path).variant_eval, SUITES_DIR, cfg.eval)
    assert result.include_path == str(SUITES_DIR) and Path(result.reference_text_path).name == "reference.txt"
    builtin = eval_with_provenance(result, None, dataclasses.replace(cfg.eval, reference_text=None))
    assert builtin.include_path is None and builtin.reference_text_path is None


def test_records_written_before_provenance_load_with_none(tmp_path):
    outcome = make_outcome(tmp_path)
    for record, cls, fields in ((outcome.variant, Variant, ("shape", "calibration_source", "calibration_hash")),
                                (outcome.variant_eval, EvalResult, ("include_path", "reference_text_path"))):
        older = {k: v for k, v in dataclasses.asdict(record).items() if k not in fields}
        (tmp_path / "old.json").write_text(json.dumps(older))
        loaded = load_record(cls, tmp_path / "old.json")
        assert all(getattr(loaded, name) is None for name in fields)


def test_a_variant_with_its_shape_round_trips_through_its_json(tmp_path):
    variant = with_provenance(embedded_variant(), compose_all(["quant=gptq"])[0].quant)
    assert load_record(Variant, save_record(variant, tmp_path / "variant.json")) == variant


def test_provenance_changes_no_cache_key(tmp_path):
    (cfg,) = compose_all(["quant=gptq"])
    plain = embedded_variant()
    assert bench_key(cfg, plain, {}) == bench_key(cfg, with_provenance(plain, cfg.quant), {})
