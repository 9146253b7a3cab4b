"""The evaluate stage on a tiny random Llama and a tiny two-task suite: items, cache, reference log-probs.

One real lm-eval run per session (~20 s on 2 cores); cache misses are detected with a stubbed
lm-eval so they cost nothing. Run: nice -n 10 pytest tests/test_evaluate.py
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.config import EvalConfig, HardwareConfig, ModelConfig, PriceConfig, RunConfig
from pipelines.evaluate import effective_add_bos_token, run_evaluate
from pipelines.evaluate.items import FIELDS, OPTIONAL_FIELDS, read_items
from pipelines.fidelity import compare
from pipelines.records import Variant

pytestmark = pytest.mark.slow  # every test reads the one real lm-eval run of the `setup` fixture

COLORS = ["red", "blue", "green"]
MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
  cluster_key: meta.claim
"""
GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 2.0
"""
GROUP_YAML = "group: tiny_suite\ntask: [tiny_mc, tiny_gen]\nmetadata:\n  version: 1.0\n"


def write_suite(directory: Path) -> Path:
    """20 multiple-choice items (with an `id` field) and 20 generation items (without), as jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    mc = [{"id": f"mc-{i}", "question": f"The claim is {COLORS[i % 3]}. The claim is",
           "choices": COLORS, "label": i % 3, "meta": {"claim": f"claim-{i // 4}"}} for i in range(20)]
    gen = [{"question": f"Invoice {i} is", "answer": COLORS[i % 3]} for i in range(20)]
    for name, rows in (("mc.jsonl", mc), ("gen.jsonl", gen)):
        (directory / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / "tiny_mc.yaml").write_text(MC_YAML.format(data=directory / "mc.jsonl"))
    (directory / "tiny_gen.yaml").write_text(GEN_YAML.format(data=directory / "gen.jsonl"))
    (directory / "tiny_suite.yaml").write_text(GROUP_YAML)
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("evaluate")
    suite = write_suite(root / "suite")
    text = root / "reference.txt"
    text.write_text(" ".join(f"Invoice {i} lists {i % 7} units." for i in range(40)))
    cfg = RunConfig(
        model=ModelConfig(name="tiny", source=str(tiny_llama_dir), dtype="float32"),
        eval=EvalConfig(name="tiny", tasks=["tiny_suite"], include_path=str(suite), batch_size=8,
                        reference_text=str(text), reference_window=16, reference_max_tokens=64),
        hardware=HardwareConfig(name="cpu", device="cpu", price_per_hour=PriceConfig(on_demand=1.0),
                                memory_bandwidth_gb_s=10.0, memory_gb=8.0),
        cache_dir=str(root / "cache"))
    variant = Variant(name="base", base="tiny", backend="none", method="none", scheme=None,
                      checkpoint_dir=str(tiny_llama_dir), size_bytes=0, content_hash="abc123", cache_key="k",
                      quantize_seconds=0.0, from_cache=False)
    return cfg, variant, run_evaluate(cfg, variant)


@pytest.fixture
def lm_eval_forbidden(monkeypatch):
    """Any model load or lm-eval run raises, so a test can prove the cache answered."""
    import lm_eval

    class Evaluated(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Evaluated("lm-eval was called")

    monkeypatch.setattr(lm_eval, "simple_evaluate", refuse)
    monkeypatch.setattr("pipelines.evaluate.lmeval_runner.LMEvalRunner.build_lm", refuse)
    return Evaluated


def test_per_item_files_have_the_documented_fields(setup):
    _, _, result = setup
    tasks = {task.task: task for task in result.tasks}
    assert sorted(tasks) == ["tiny_gen", "tiny_mc"]
    mc, gen = read_items(tasks["tiny_mc"].items_path), read_items(tasks["tiny_gen"].items_path)
    assert len(mc) == len(gen) == 20 and all(set(item) == set(FIELDS + OPTIONAL_FIELDS) for item in mc + gen)
    # tiny_mc names a cluster key in its metadata (a nested field); tiny_gen names none.
    assert [item["cluster"] for item in mc[:5]] == ["claim-0"] * 4 + ["claim-1"]
    assert all(item["cluster"] is None for item in gen)
    assert (tasks["tiny_mc"].cluster_key, tasks["tiny_gen"].cluster_key) == ("meta.claim", None)
    first = mc[0]
    assert first["item_id"] == "mc-0" and first["target"] == 0 and len(first["choice_loglikelihoods"]) == 3
    assert first["prediction"] == max(range(3), key=first["choice_loglikelihoods"].__getitem__)
    assert first["correct"] == (first["prediction"] == first["target"]) and first["score"] == float(first["correct"])
    assert gen[3]["item_id"] == "3" and gen[3]["target"] == "red" and gen[3]["choice_loglikelihoods"] is None
    # What a reviewer reads in the report's flips browser: the context given and the choice texts.
    assert isinstance(first["prompt"], str) and first["prompt"] and isinstance(gen[3]["prompt"], str)
    assert len(first["choices"]) == 3 and all(isinstance(c, str) for c in first["choices"]) and gen[3]["choices"] is None
    assert isinstance(gen[3]["prediction"], str) and isinstance(gen[3]["correct"], bool)
    assert tasks["tiny_mc"].value == pytest.approx(sum(item["score"] for item in mc) / 20)
    assert (tasks["tiny_mc"].version, tasks["tiny_gen"].version) == ("1.0", "2.0")


def test_settings_record_the_effective_bos_behaviour(setup, tiny_llama_dir):
    from transformers import AutoTokenizer

    _, _, result = setup
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    adds_bos = tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    assert result.settings["add_bos_token"] is adds_bos is False
    assert effective_add_bos_token(tokenizer, True) is True


def test_reference_logprobs_have_one_row_per_window_token(setup):
    from safetensors.torch import load_file

    _, _, result = setup
    tensors = load_file(result.reference_logprobs_path)
    # 64 text tokens in windows of 16 (no BOS for this tokenizer), vocab 512 (< 32k: float32).
    assert tuple(tensors["token_ids"].shape) == (4, 16)
    assert tuple(tensors["logprobs"].shape) == (4, 16, 512) and str(tensors["logprobs"].dtype) == "torch.float32"
    assert tensors["logprobs"].exp().sum(-1).sub(1).abs().max() < 1e-4


def test_second_run_reuses_the_cache_without_evaluating(setup, lm_eval_forbidden, caplog):
    cfg, variant, first = setup
    with caplog.at_level(logging.INFO, logger="pipelines.evaluate"):
        again = run_evaluate(cfg, variant)
    assert again.from_cache and again.settings_hash == first.settings_hash
    assert "reusing cached evaluation of base from" in caplog.text
    fidelity = compare(first, again, confidence=0.95, bootstrap_samples=200, seed=0)
    assert all(task.flip_rate == 0 and task.delta == 0 for task in fidelity.tasks)
    assert fidelity.divergence.kl_mean == 0 and fidelity.divergence.perplexity_ratio == 1.0


def test_changed_setting_invalidates_the_cache(setup, lm_eval_forbidden):
    cfg, variant, _ = setup
    with pytest.raises(lm_eval_forbidden):
        run_evaluate(replace(cfg, eval=replace(cfg.eval, num_fewshot=1)), variant)


def test_changed_suite_data_invalidates_the_cache(setup, lm_eval_forbidden):
    cfg, variant, _ = setup
    data = Path(cfg.eval.include_path) / "gen.jsonl"
    original = data.read_text()
    data.write_text(original.replace('"answer": "red"', '"answer": "blue"', 1))
    try:
        with pytest.raises(lm_eval_forbidden):
            run_evaluate(cfg, variant)
    finally:
        data.write_text(original)
    assert run_evaluate(cfg, variant).from_cache


def test_vllm_runner_without_vllm_says_to_install_the_extra(setup):
    from importlib.util import find_spec

    from pipelines.errors import ConfigError
    from pipelines.evaluate.lmeval_runner import LMEvalRunner

    cfg, _, _ = setup
    if find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ConfigError, match=r"quantgate\[vllm\]"):
        LMEvalRunner.check(replace(cfg.eval, runner="vllm"))  # preflight's check; the runner trusts it


def test_unknown_task_and_unknown_param_are_one_line_errors(setup):
    from pipelines.errors import ConfigError
    from pipelines.evaluate.lmeval_runner import LMEvalRunner

    cfg, _, _ = setup
    with pytest.raises(ConfigError, match="did you mean 'bootstrap_iters'"):
        LMEvalRunner.check(replace(cfg.eval, params={"bootstrap_iter": 0}))
    from pipelines.evaluate.suites import check_task_names

    with pytest.raises(ConfigError, match="unknown lm-eval task 'tiny_mcq' \\(did you mean 'tiny_mc'"):
        check_task_names(["tiny_mcq"], ["tiny_mc", "tiny_gen", "tiny_suite"])
