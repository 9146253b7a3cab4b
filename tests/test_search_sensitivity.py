"""Layer sensitivity (pipelines/search/sensitivity.py) on tiny random Llamas, and keep-k checkpoints.

The planted-layer test (issue #26 item 5): one layer of a 4-layer model gets outlier weights on
always-zero channels of its MLP, harmless in the base, but 4-bit round-to-nearest (one scale per
group of 128) then flushes that layer's real weights to zero; the probe must rank it first and
the k=1 candidate must keep it, by name.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import TINY_TEXT, build_tokenizer

from pipelines.config import PrecisionOverride, QuantConfig
from pipelines.models import resolve_base
from pipelines.search.candidates import build_candidates
from pipelines.records import from_dict
from pipelines.search.sensitivity import (KIND_TARGETS, Sensitivity, UnitKL, layer_target, log_sensitivity,
                                          measure_sensitivity, sensitivity_metrics)
from pipelines.sizing import model_size

FRAGILE_LAYER = 2
W4A16_RTN = QuantConfig(name="w4a16", method="rtn", scheme="W4A16")


def plant_outliers(model, layer: int) -> None:
    """Outlier weights on channels that are always zero, in every MLP projection of `layer`: the base
    output is unchanged, but one scale per group of 128 now spans the outlier and 4-bit rounding
    flushes the group's real weights to zero (the layer's MLP is lost when quantized)."""
    import torch

    mlp, norm = model.model.layers[layer].mlp, model.model.layers[layer].post_attention_layernorm
    with torch.no_grad():
        for projection in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            projection.weight *= 4  # the layer's MLP matters: losing it shows above the other layers' noise
        norm.weight[0] = 0.0  # MLP input channel 0 is always zero
        for projection in (mlp.gate_proj, mlp.up_proj):
            projection.weight[:, 0] = 100 * projection.weight.abs().max()
        dead = list(range(0, mlp.down_proj.in_features, 128))  # intermediate channels 0, 128: gate rows zeroed
        mlp.gate_proj.weight[dead, 1:] = 0.0
        mlp.down_proj.weight[:, dead] = 100 * mlp.down_proj.weight.abs().max()


@pytest.fixture(scope="module")
def fragile_llama(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("fragile-llama")
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    plant_outliers(model, FRAGILE_LAYER)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "reference.txt").write_text(" ".join(TINY_TEXT * 8))
    return directory


def probe_config(model_dir, tmp_path):
    from pipelines.pipeline import compose_config

    return compose_config([f"model.source={model_dir}", f"eval.reference_text={model_dir / 'reference.txt'}",
                           "eval.reference_window=128", "eval.reference_max_tokens=2048",
                           "eval.bootstrap_samples=500", f"cache_dir={tmp_path / 'cache'}", "model.dtype=float32"])


@pytest.mark.slow
def test_a_planted_fragile_layer_ranks_first_and_the_k1_candidate_keeps_it(fragile_llama, tmp_path):
    cfg = probe_config(fragile_llama, tmp_path)
    base = resolve_base(cfg.model)
    sensitivity = measure_sensitivity(cfg, base, W4A16_RTN)
    assert [unit.unit for unit in sensitivity.layers] == [f"layer_{i}" for i in range(4)]
    assert [unit.unit for unit in sensitivity.kinds] == list(KIND_TARGETS)
    assert sensitivity.ranked_layers()[0] == FRAGILE_LAYER
    fragile = sensitivity.layers[FRAGILE_LAYER]
    others = [unit for unit in sensitivity.layers if unit is not fragile]
    assert fragile.kl_ci_low > max(unit.kl_ci_high for unit in others)  # first beyond its interval
    assert sensitivity_metrics(sensitivity)[f"sensitivity/W4A16/layer_{FRAGILE_LAYER}_kl"] == fragile.kl_mean
    candidates = {c.name: c for c in build_candidates([W4A16_RTN], {"w4a16": sensitivity},
                                                      model_size(base.config, cfg.model), 1, None)}
    assert candidates["w4a16-keep1"].kept == [f"layer_{FRAGILE_LAYER}"]
    assert candidates["w4a16-keep1"].quant.ignore == ["lm_head", layer_target(FRAGILE_LAYER)]
    assert measure_sensitivity(cfg, base, W4A16_RTN) == sensitivity  # the second call reads the cache


@pytest.mark.slow
@pytest.mark.parametrize("kept_scheme, dtype", [(None, "F32"), ("W8A8", "I8")])
def test_a_keep_k_checkpoint_stores_the_kept_layer_in_its_precision_and_loads(tiny_base, tmp_path, kept_scheme,
                                                                              dtype):
    from safetensors import safe_open

    from pipelines.models import load_causal_lm
    from pipelines.quantize.llmcompressor_backend import LLMCompressorQuantizer

    if kept_scheme is None:
        recipe = dataclasses.replace(W4A16_RTN, ignore=["lm_head", layer_target(1)])
    else:
        recipe = dataclasses.replace(W4A16_RTN, precision_overrides=[PrecisionOverride([layer_target(1)],
                                                                                       kept_scheme)])
    LLMCompressorQuantizer().quantize(tiny_base, recipe, [], tmp_path, seed=0)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as stored:
        assert stored.get_slice("model.layers.1.mlp.down_proj.weight").get_dtype() == dtype
        assert stored.get_slice("model.layers.0.mlp.down_proj.weight_packed").get_dtype() == "I32"  # 4-bit packed
    load_causal_lm(tmp_path, "float32")  # transformers' compressed-tensors loader takes the mixed checkpoint
    if kept_scheme is None:  # vLLM skips exactly the modules the checkpoint's config lists as ignored
        ignored = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["ignore"]
        assert "model.layers.1.mlp.down_proj" in ignored and "model.layers.0.mlp.down_proj" not in ignored


def made_sensitivity() -> Sensitivity:
    layers = [UnitKL("layer_0", layer_target(0), 0.002, 0.001, 0.003, 0.99),
              UnitKL("layer_1", layer_target(1), 0.004, None, None, 0.98)]
    kinds = [UnitKL("mlp", KIND_TARGETS["mlp"], 0.005, 0.004, 0.007, 0.97)]
    return Sensitivity(scheme="W4A16", group_size=64, layers=layers, kinds=kinds, tokens=4096,
                       text_source="reference", text_hash="h", base_fingerprint="f", confidence=0.95, seconds=3.0)


class RecordingClient:
    """An MlflowClient stand-in keeping what log_batch and log_dict received."""

    def __init__(self) -> None:
        self.metrics, self.dicts = {}, {}

    def log_batch(self, run_id, metrics=()):
        self.metrics.update({(run_id, m.key): m.value for m in metrics})

    def log_dict(self, run_id, dictionary, artifact_file):
        self.dicts[(run_id, artifact_file)] = json.loads(json.dumps(dictionary))


def test_sensitivity_is_logged_to_mlflow_as_metrics_per_unit_and_the_record():
    client = RecordingClient()
    log_sensitivity(client, "run", made_sensitivity())
    prefix = "sensitivity/W4A16_g64/"
    assert client.metrics == {("run", prefix + key): value for key, value in {
        "layer_0_kl": 0.002, "layer_0_kl_ci_low": 0.001, "layer_0_kl_ci_high": 0.003, "layer_1_kl": 0.004,
        "mlp_kl": 0.005, "mlp_kl_ci_low": 0.004, "mlp_kl_ci_high": 0.007}.items()}
    assert from_dict(Sensitivity, client.dicts[("run", "sensitivity/W4A16_g64.json")]) == made_sensitivity()


def test_the_sensitivity_chart_draws_every_unit_with_its_interval():
    from pipelines.report_charts import sensitivity_figure

    bar = sensitivity_figure(made_sensitivity()).data[0]
    assert list(bar.x) == ["layer_0", "layer_1", "mlp"] and list(bar.y) == [0.002, 0.004, 0.005]
    assert list(bar.error_y.array) == pytest.approx([0.001, 0.0, 0.002])
    assert list(bar.error_y.arrayminus) == pytest.approx([0.001, 0.0, 0.001])


def test_a_model_without_llama_style_module_names_is_refused_before_probing():
    import torch

    from pipelines.errors import InputError
    from pipelines.search.sensitivity import _check_targets

    model = torch.nn.ModuleDict({"h": torch.nn.ModuleList([torch.nn.Linear(4, 4)]), "lm_head": torch.nn.Linear(4, 4)})
    with pytest.raises(InputError, match="model m has no modules for layer_0, attention, mlp: the sensitivity probe"):
        _check_targets(model, [("layer_0", layer_target(0)), *KIND_TARGETS.items()], "m")


@pytest.mark.parametrize("name, message", [("none", "quant=none has no scheme to probe"),
                                           ("static", "scheme FP8 sets static activation scales")])
def test_a_scheme_the_probe_cannot_quantize_data_free_is_refused_before_any_work(tmp_path, name, message):
    from pipelines.config import ConfigError
    from pipelines.models import BaseModel
    from pipelines.pipeline import compose_config

    quant = QuantConfig(name="none") if name == "none" else QuantConfig(name=name, method="rtn", scheme="FP8")
    with pytest.raises(ConfigError, match=message):
        measure_sensitivity(compose_config([f"cache_dir={tmp_path}"]), BaseModel("b", tmp_path, "f", {}), quant)
    assert not any(tmp_path.iterdir())


def test_the_probe_reads_the_calibration_texts_when_there_is_no_reference_text(tmp_path):
    from pipelines.embedded import CALIBRATION_TEXT, REFERENCE_TEXT
    from pipelines.models import BaseModel
    from pipelines.pipeline import compose_config
    from pipelines.quantize.calibration import load_calibration
    from pipelines.search.sensitivity import probe_text

    cfg = compose_config(["eval.reference_text=null", "quant.calibration.num_samples=3"])
    base = BaseModel("b", tmp_path, "f", {})
    assert probe_text(cfg, base, cfg.quant) == ("\n\n".join(load_calibration(cfg.quant.calibration)), "calibration")
    assert CALIBRATION_TEXT.read_text().startswith(probe_text(cfg, base, cfg.quant)[0][:40])
    with_reference = compose_config([])
    assert probe_text(with_reference, base, with_reference.quant) == (REFERENCE_TEXT.read_text(), "reference")
