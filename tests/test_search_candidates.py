"""Candidate recipes (pipelines/search/candidates.py) and the precision-override quant field: no models."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import CONF, load_config_file

from pipelines.config import PrecisionOverride, QuantConfig
from pipelines.errors import ConfigError
from pipelines.models import BaseModel
from pipelines.quantize import variant_key
from pipelines.quantize.schemes import check_scheme
from pipelines.search.candidates import BASE, build_candidates, write_quant_yaml
from pipelines.search.sensitivity import Sensitivity, UnitKL, layer_target
from pipelines.shape import ModelShape

# 4 layers of 1000 decoder Linear weights each, 600 other weights, float32.
SHAPE = ModelShape(params=4600.0, layers=4, kv_heads=2, head_dim=64, weight_bytes=4600 * 4, dtype="float32",
                   compute_dtype="float32", hidden=128, intermediate=256, heads=2, vocab=512, max_positions=512,
                   linear_params=4000.0, lm_head_params=0.0)


def quant(name: str) -> QuantConfig:
    return load_config_file(f"quant/{name}", QuantConfig)


def sensitivity(layer_kls: list[float]) -> Sensitivity:
    layers = [UnitKL(f"layer_{i}", layer_target(i), kl, None, None, 1.0) for i, kl in enumerate(layer_kls)]
    return Sensitivity(scheme="X", group_size=None, layers=layers, kinds=[], tokens=100, text_source="reference",
                       text_hash="h", base_fingerprint="f", confidence=0.95, seconds=1.0)


def by_name(candidates):
    return {candidate.name: candidate for candidate in candidates}


def test_keep_k_keeps_the_k_most_sensitive_layers_unquantized_most_sensitive_first():
    fp8 = quant("fp8")
    found = by_name(build_candidates([fp8], {"fp8": sensitivity([0.1, 0.5, 0.2, 0.05])}, SHAPE, 2, None))
    assert found["fp8-keep1"].kept == ["layer_1"]
    assert found["fp8-keep2"].kept == ["layer_1", "layer_2"]
    assert found["fp8-keep2"].quant.ignore == ["lm_head", layer_target(1), layer_target(2)]


def test_the_k0_candidate_is_the_plain_scheme_with_its_cache_key():
    fp8 = quant("fp8")
    plain = by_name(build_candidates([fp8], {"fp8": sensitivity([0.1, 0.2, 0.3, 0.4])}, SHAPE, 1, None))["fp8"]
    assert plain.kept == [] and plain.quant == fp8


def test_max_kept_is_capped_at_the_layer_count():
    names = by_name(build_candidates([quant("fp8")], {"fp8": sensitivity([0.1, 0.2])},
                                     dataclasses.replace(SHAPE, layers=2), 5, None))
    assert sorted(names) == ["fp8", "fp8-keep1", "fp8-keep2"]


def test_w4a16_gptq_also_keeps_layers_at_w8a8_in_a_second_config_group():
    gptq = quant("gptq")
    found = by_name(build_candidates([gptq], {"gptq": sensitivity([0.3, 0.1, 0.2, 0.0])}, SHAPE, 1, None))
    assert found["gptq-keep1-w8a8"].quant.precision_overrides == [PrecisionOverride([layer_target(0)], "W8A8")]
    assert found["gptq-keep1-w8a8"].quant.ignore == gptq.ignore
    # AWQ's smoothing assumes one scheme: only unquantized keeps.
    assert sorted(by_name(build_candidates([quant("awq")], {"awq": sensitivity([0.3, 0.1, 0.2, 0.0])}, SHAPE, 1,
                                           None))) == ["awq", "awq-keep1"]


def test_predicted_bytes_move_kept_layers_to_the_base_dtype():
    found = by_name(build_candidates([quant("fp8")], {"fp8": sensitivity([0.1, 0.2, 0.3, 0.4])}, SHAPE, 1, None))
    # FP8: 4000 Linear weights at 1 byte, 600 others at 4; keeping one layer moves 1000 weights from 1 to 4 bytes.
    assert found["fp8"].predicted_bytes == 4000 + 600 * 4
    assert found["fp8-keep1"].predicted_bytes == 3000 + 1000 * 4 + 600 * 4


def test_predicted_bytes_of_w8a8_inside_w4a16_count_group_scales():
    found = by_name(build_candidates([quant("gptq")], {"gptq": sensitivity([0.1, 0.2, 0.3, 0.4])}, SHAPE, 1, None))
    w4 = 0.5 + 2 / 128  # 4 bits plus a bfloat16 scale per group of 128
    assert found["gptq"].predicted_bytes == round(4000 * w4 + 600 * 4)
    assert found["gptq-keep1-w8a8"].predicted_bytes == round(3000 * w4 + 1000 * 1 + 600 * 4)


def test_predicted_cost_interpolates_between_base_and_plain_costs_by_weight_fraction():
    schemes = [quant("fp8"), quant("gptq"), quant("w8a8")]
    kls = {name: sensitivity([0.1, 0.2, 0.3, 0.4]) for name in ("fp8", "gptq", "w8a8")}
    found = by_name(build_candidates(schemes, kls, SHAPE, 1, {BASE: 10.0, "fp8": 6.0, "gptq": 4.0, "w8a8": 7.0}))
    assert found["fp8"].predicted_cost_per_mtok == pytest.approx(6.0)
    assert found["fp8-keep1"].predicted_cost_per_mtok == pytest.approx(10 + 0.75 * (6 - 10))
    assert found["gptq-keep1-w8a8"].predicted_cost_per_mtok == pytest.approx(10 + 0.75 * (4 - 10) + 0.25 * (7 - 10))


def test_candidates_are_ordered_by_predicted_cost_then_bytes_then_name_and_unpriced_last():
    schemes = [quant("fp8"), quant("gptq")]
    kls = {name: sensitivity([0.1, 0.2, 0.3, 0.4]) for name in ("fp8", "gptq")}
    ordered = build_candidates(schemes, kls, SHAPE, 1, {BASE: 10.0, "gptq": 4.0})
    assert [c.name for c in ordered] == ["gptq", "gptq-keep1", "gptq-keep1-w8a8", "fp8", "fp8-keep1"]
    assert [c.predicted_cost_per_mtok for c in ordered][-3:] == [None, None, None]
    assert [c.name for c in build_candidates(schemes, kls, SHAPE, 0, None)] == ["gptq", "fp8"]  # by bytes


def test_a_scheme_without_sensitivity_is_refused():
    with pytest.raises(ValueError, match="no sensitivity measured for fp8"):
        build_candidates([quant("fp8")], {}, SHAPE, 1, None)


@pytest.mark.parametrize("name, expected", [("fp8", "13fae60dec2d0b2b"), ("awq", "c1aeb2d34599aa4c"),
                                            ("gptq", "fb363ee214592054"), ("w8a8", "40f6e98194c1e47a")])
def test_variant_keys_of_existing_quant_configs_are_unchanged_by_precision_overrides(name, expected):
    # Keys computed before quant.precision_overrides existed: cached checkpoints stay valid.
    base = BaseModel("b", None, "fingerprint", {})
    assert variant_key(base, quant(name), ["text"], {"llmcompressor": "0.14"}, 0) == expected


def test_a_precision_override_changes_the_variant_key():
    base, gptq = BaseModel("b", None, "fingerprint", {}), quant("gptq")
    overridden = dataclasses.replace(gptq, precision_overrides=[PrecisionOverride([layer_target(0)], "W8A8")])
    assert variant_key(base, overridden, [], {}, 0) != variant_key(base, gptq, [], {}, 0)


def test_precision_overrides_are_refused_for_awq_and_for_unknown_or_static_schemes():
    override = [PrecisionOverride([layer_target(0)], "W8A8")]
    with pytest.raises(ConfigError, match="precision_overrides work with quant.method gptq or rtn, not awq"):
        check_scheme(dataclasses.replace(quant("awq"), precision_overrides=override))
    for scheme in ("W8A9", "FP8"):
        with pytest.raises(ConfigError, match="precision_overrides scheme: unknown data-free"):
            check_scheme(dataclasses.replace(quant("gptq"), precision_overrides=[PrecisionOverride(["x"], scheme)]))


@pytest.mark.parametrize("name", ["fp8-keep2", "gptq-keep2-w8a8"])
def test_written_quant_yaml_composes_to_the_candidate_config(tmp_path, name):
    from pipelines.pipeline import compose_config

    schemes = [quant("fp8"), quant("gptq")]
    kls = {s.name: sensitivity([0.1, 0.5, 0.2, 0.05]) for s in schemes}
    candidate = by_name(build_candidates(schemes, kls, SHAPE, 2, None))[name]
    path = write_quant_yaml(candidate, tmp_path / "quant" / f"{name}.yaml")
    assert path.read_text().startswith(f"# python -m pipelines.run quant={path} ")
    composed = compose_config([f"quant={name}", f"hydra.searchpath=[file://{tmp_path}]"])
    assert composed.quant == candidate.quant
    assert (CONF / "quant" / "fp8.yaml").is_file()  # the packaged group is still found beside it
