"""The plan of a real-model run, on CPU with no weights and no hub: config.json shapes written here.

    python -m pytest -q tests/test_plan.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import hub
from pipelines.cli import compose_all
from pipelines.errors import ConfigError, InputError
from pipelines.plan import build_plan, check_plan
from pipelines.sizing import serve_gb_per_gpu

# The config.json fields of the published checkpoints (meta-llama/Meta-Llama-3-8B-Instruct,
# meta-llama/Meta-Llama-3-70B-Instruct, Qwen/Qwen3-8B).
LLAMA = {"architectures": ["LlamaForCausalLM"], "num_key_value_heads": 8, "vocab_size": 128256,
         "max_position_embeddings": 8192, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
SHAPES = {
    "llama3-8b": {**LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32},
    "llama3-70b": {**LLAMA, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                   "num_attention_heads": 64},
    "qwen3-8b": {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 4096, "intermediate_size": 12288,
                 "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                 "vocab_size": 151936, "max_position_embeddings": 40960, "tie_word_embeddings": False,
                 "torch_dtype": "bfloat16"},
}
# Parameters from the safetensors index of the Llama checkpoints ("total_size" bytes / 2 in bfloat16).
PUBLISHED_PARAMS = {"llama3-8b": 16060522496 / 2, "llama3-70b": 141107412992 / 2}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A directory per model holding only its config.json: the plan reads nothing else."""
    dirs = {}
    for name, shape in SHAPES.items():
        directory = tmp_path_factory.mktemp(name)
        (directory / "config.json").write_text(json.dumps(shape))
        dirs[name] = directory
    return dirs


def plan_for(model_dirs, model: str, *overrides: str):
    (cfg,) = compose_all([f"model={model}", f"model.source={model_dirs[model]}", *overrides])
    return build_plan(cfg)


@pytest.mark.parametrize("model", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_published_checkpoint(model_dirs, model):
    plan = plan_for(model_dirs, model, "quant=none")
    assert plan.size.params == PUBLISHED_PARAMS[model]
    assert plan.base_bytes == 2 * PUBLISHED_PARAMS[model]


def test_qwen3_size_by_hand(model_dirs):
    # Per layer: attention 4096*128*(2*32+2*8), MLP 3*4096*12288, two norms; embeddings and lm_head untied.
    layer = 4096 * 128 * 80 + 3 * 4096 * 12288 + 2 * 4096
    expected = 36 * layer + 2 * 151936 * 4096 + 4096
    assert plan_for(model_dirs, "qwen3-8b", "quant=none").size.params == expected


def test_w4a16_bytes_quantize_linear_layers_with_group_scales(model_dirs):
    plan = plan_for(model_dirs, "llama3-70b", "quant=awq")
    embeddings_and_head = 2 * 128256 * 8192
    linear = 80 * (8192 * 128 * (128 + 16) + 3 * 8192 * 28672)
    expected = linear / 2 + linear / 128 * 2 + (plan.size.params - linear) * 2  # 4 bits + bf16 scale per 128
    assert plan.variant_bytes == pytest.approx(expected)
    assert plan.size.params - linear == pytest.approx(embeddings_and_head + 80 * 2 * 8192 + 8192)


@pytest.mark.parametrize(("model", "hardware", "tensor_parallel"), [
    ("llama3-8b", "h100", 1), ("llama3-8b", "h200", 1), ("llama3-8b", "l4", 2),
    ("llama3-70b", "h100", 4), ("llama3-70b", "h200", 2), ("llama3-70b", "l4", 8),
    ("qwen3-8b", "h100", 1), ("qwen3-8b", "h200", 1), ("qwen3-8b", "l4", 2),
])
def test_serving_needs_the_smallest_tensor_parallel_size_that_fits(model_dirs, model, hardware, tensor_parallel):
    plan = plan_for(model_dirs, model, "quant=fp8", f"hardware={hardware}")
    assert plan.needed_tp == tensor_parallel
    fits = plan.cfg.serve.tensor_parallel_size >= tensor_parallel
    assert (not plan.problems) == fits
    if not fits:
        assert f"set serve.tensor_parallel_size={tensor_parallel}" in plan.problems[0]


def test_per_gpu_memory_by_hand():
    # Llama-3-70B bf16 on 4 GPUs: weights / 4 + KV for 64 x 640 tokens / 4 + 2 GB overhead.
    from pipelines.shape import ModelShape

    size = ModelShape(params=70.55e9, linear_params=0, lm_head_params=0, layers=80, hidden=8192, intermediate=28672,
                      heads=64, kv_heads=8, head_dim=128, vocab=128256, max_positions=8192, dtype="bfloat16",
                      weight_bytes=int(141.1e9), compute_dtype="bfloat16")
    kv_per_token = 2 * 80 * 8 * 128 * 2
    expected = (141.1e9 / 4 + 40960 * kv_per_token / 4) / 1e9 + 2.0
    assert serve_gb_per_gpu(size, 141.1e9, 40960, 4) == pytest.approx(expected)


def test_real_model_defaults_replace_the_embedded_models_groups():
    (cfg,) = compose_all(["model=llama3-70b", "quant=awq"])
    cal = cfg.quant.calibration
    assert (cal.source, cal.split, cal.text_field, cal.chat_template, cal.num_samples, cal.max_seq_length) == (
        "hf:HuggingFaceH4/ultrachat_200k", "train_sft", "messages", True, 512, 2048)
    assert (cfg.eval.name, cfg.eval.include_path, cfg.bench.name, cfg.hardware.name) == ("standard", None, "served-gpu", "h100")
    assert (cfg.serve.name, cfg.serve.tensor_parallel_size) == ("vllm", 4)
    assert build_plan(cfg).warnings == []
    (chosen,) = compose_all(["model=llama3-70b", "bench=cpu", "serve.tensor_parallel_size=8"])
    assert (chosen.bench.name, chosen.serve.tensor_parallel_size) == ("cpu", 8)  # the command line still wins


def test_embedded_model_keeps_its_toy_defaults_and_no_warnings():
    (cfg,) = compose_all([])
    assert cfg.quant.calibration.source == "embedded" and cfg.eval.name == "domain" and cfg.hardware.name == "cpu-2core"
    assert build_plan(cfg).warnings == []


def test_real_model_on_toy_suites_calibration_and_cpu_warns_one_line_each(model_dirs):
    (cfg,) = compose_all(["model=llama3-8b", "quant=gptq", "eval=domain", "calibration=embedded",
                          "hardware=cpu-2core", "bench=cpu"])
    warnings = build_plan(cfg).warnings
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    assert "toy suites" in warnings[0] and "toy text" in warnings[1] and "cpu-2core" in warnings[2]


def test_inprocess_serving_of_a_model_larger_than_one_gpu_is_refused(model_dirs):
    plan = plan_for(model_dirs, "llama3-70b", "quant=fp8", "serve=inprocess")
    assert "use serve=vllm serve.tensor_parallel_size=4" in plan.problems[0]
    with pytest.raises(ConfigError, match="serve=inprocess"):
        check_plan(plan.cfg)


def test_tensor_parallel_size_must_divide_the_attention_heads(model_dirs):
    plan = plan_for(model_dirs, "llama3-70b", "quant=fp8", "serve.tensor_parallel_size=3")
    assert "must divide the 64 attention heads" in plan.problems[0]


def test_shape_in_the_model_config_plans_without_any_file():
    (cfg,) = compose_all(["model=llama3-70b", "quant=awq"])
    plan = build_plan(cfg)
    assert plan.size.params == PUBLISHED_PARAMS["llama3-70b"] and "conf/model/llama3-70b.yaml" in plan.shape_source


def test_plan_flag_prints_in_one_process_without_torch_and_writes_nothing(tmp_path):
    code = ("import sys; sys.argv=['run','model=llama3-70b','quant=awq','plan=true'];"
            "from pipelines import run\n"
            "try: run.main()\nexcept SystemExit as e: code = e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "needs 4 x h100 at tensor-parallel 4" in result.stdout and "verdict    fits" in result.stdout
    assert "items      arc_challenge 1,172 (test), hellaswag 10,042 (validation)" in result.stdout
    evaluate = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("evaluate"))
    assert "?" not in evaluate and "103,558 loglikelihood requests" in evaluate and "estimates" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_run_that_does_not_fit_is_refused_before_any_output(tmp_path, model_dirs):
    args = ["model=llama3-8b", f"model.source={model_dirs['llama3-8b']}", "quant=fp8", "hardware=l4"]
    result = subprocess.run([sys.executable, "-m", "pipelines.run", *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "quantgate: error: serving needs 2 x l4 at tensor-parallel 2 (~23 GB per GPU at 1, 22 usable): "
        "set serve.tensor_parallel_size=2")
    assert list(tmp_path.iterdir()) == []


def test_plan_counts_the_items_of_local_suites(model_dirs):
    (cfg,) = compose_all(["model=llama3-8b", f"model.source={model_dirs['llama3-8b']}",
                          "eval.include_path=embedded", "eval.tasks=[qg_invoice_total,gsm8k,piqa]", "eval.limit=100"])
    # gsm8k's size ships with eval=standard (capped by the limit); piqa's is unknown offline.
    assert dict(build_plan(cfg, count_items=True).suites) == {"qg_invoice_total": 100, "gsm8k": 100, "piqa": None}


class _Response:
    """Just enough of an httpx.Response for huggingface_hub's error classes."""

    status_code, headers, request, url = 403, {}, None, "https://huggingface.co/api/models/x"


def test_gated_model_is_one_line_naming_the_token(monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    def refuse(*args, **kwargs):
        raise GatedRepoError("Access to model meta-llama/Meta-Llama-3-8B-Instruct is restricted.", response=_Response())

    monkeypatch.setattr("huggingface_hub.auth_check", refuse)
    (cfg,) = compose_all(["model=llama3-8b"])
    with pytest.raises(InputError) as error:
        hub.check_access(cfg.model)
    message = str(error.value)
    assert "gated" in message and "HF_TOKEN" in message and "model.token" in message and "\n" not in message


def test_download_checks_disk_space_before_fetching(monkeypatch, tmp_path):
    from huggingface_hub.file_download import DryRunFileInfo

    fetched = []

    def snapshot(repo_id, **kwargs):
        if kwargs.get("dry_run"):
            return [DryRunFileInfo(commit_hash="c", file_size=50 * 10**9, filename="model.safetensors",
                                   local_path="x", is_cached=False, will_download=True)]
        fetched.append(repo_id)
        return str(tmp_path)

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.auth_check", lambda *a, **k: None)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot)
    monkeypatch.setattr(hub, "free_bytes", lambda directory: 10 * 10**9)
    (cfg,) = compose_all(["model=llama3-8b"])
    with pytest.raises(InputError, match=r"needs 50.0 GB .* 10.0 GB are free; .*HF_HUB_CACHE"):
        hub.download(cfg.model)
    assert fetched == []
    monkeypatch.setattr(hub, "free_bytes", lambda directory: 100 * 10**9)
    assert hub.download(cfg.model) == tmp_path and fetched == [cfg.model.source]


def test_offline_download_of_an_uncached_model_names_the_cache(monkeypatch):
    monkeypatch.setattr(hub, "offline", lambda: True)
    (cfg,) = compose_all(["model=qwen3-8b", "model.source=quantgate-missing/none"])
    with pytest.raises(InputError, match="HF_HUB_OFFLINE=1 and model.source=quantgate-missing/none is not in"):
        hub.download(cfg.model)


def test_chat_calibration_is_rendered_with_the_models_chat_template(tmp_path):
    from conftest import build_tokenizer

    from pipelines.config import CalibrationConfig
    from pipelines.quantize.calibration import load_calibration

    tokenizer = build_tokenizer(tmp_path)
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(tmp_path)
    data = tmp_path / "chats.jsonl"
    chats = [[{"role": "user", "content": "Total of invoice 1042?"}, {"role": "assistant", "content": "51 dollars."}],
             [{"role": "user", "content": "Route this claim."}]]
    data.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats) + '{"messages": "not a chat"}\n')
    cal = CalibrationConfig(source=str(data), text_field="messages", chat_template=True, num_samples=8)
    # The template's BOS is dropped: llm-compressor's tokenizer call adds it again.
    assert load_calibration(cal, tmp_path) == ["user: Total of invoice 1042?\nassistant: 51 dollars.",
                                               "user: Route this claim."]
    assert [json.loads(text) for text in load_calibration(cal)] == chats  # preflight: checked, not rendered


def test_preflight_refuses_a_variant_that_does_not_fit_on_the_disk(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "free_bytes", lambda directory: 1000)
    (cfg,) = compose_all(["quant=gptq", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(InputError, match=r"the gptq variant .* are free; free space or set cache_dir"):
        check_plan(cfg)
    assert not (tmp_path / "cache").exists()


def test_quantizing_on_a_gpu_needs_one_even_against_endpoints(model_dirs, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    (cfg,) = compose_all(["model=llama3-8b", f"model.source={model_dirs['llama3-8b']}", "quant=fp8", "serve=endpoint"])
    assert build_plan(cfg).serve_gpus == 0
    with pytest.raises(InputError, match=r"needs 1 x h100 \(CUDA\) and this machine has 0"):
        check_plan(cfg)


def test_a_toy_sized_local_model_on_the_toy_suites_is_not_warned_about(tiny_llama_dir):
    (cfg,) = compose_all([f"model.source={tiny_llama_dir}", "quant=gptq"])
    assert build_plan(cfg).warnings == []  # 0.4 M parameters: the bundled suites and calibration fit it


# Published sizes of the splits lm-eval scores (dataset cards: allenai/ai2_arc, Rowan/hellaswag,
# allenai/winogrande winogrande_xl, openai/gsm8k main, cais/mmlu all).
PUBLISHED_ITEMS = {"arc_challenge": ("test", 1172), "hellaswag": ("validation", 10042),
                   "winogrande": ("validation", 1267), "gsm8k": ("test", 1319), "mmlu": ("test", 14042)}
LM_EVAL_YAML = {"arc_challenge": "arc/arc_challenge.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
                "winogrande": "winogrande/default.yaml", "gsm8k": "gsm8k/gsm8k.yaml",
                "mmlu": "mmlu/default/_default_template_yaml"}


def _lm_eval_task_yaml(relative: str) -> dict:
    """A built-in task YAML of the installed lm-eval, its `include:` merged under it, !function tags as text."""
    import yaml
    from lm_eval import tasks

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: suffix)
    path = Path(tasks.__file__).parent / relative
    config = yaml.load(path.read_text(), Loader=Loader)
    if "include" in config:
        config = {**_lm_eval_task_yaml(str(Path(relative).parent / config.pop("include"))), **config}
    return config


@pytest.mark.parametrize("task", sorted(PUBLISHED_ITEMS))
def test_shipped_task_sizes_are_lm_evals_scored_split_at_its_published_size(task):
    from lm_eval.tasks import __file__ as tasks_init

    (cfg,) = compose_all(["model=llama3-8b"])
    size, config = cfg.eval.task_sizes[task], _lm_eval_task_yaml(LM_EVAL_YAML[task])
    assert (size.split, size.items) == PUBLISHED_ITEMS[task]
    assert size.split == (config.get("test_split") or config["validation_split"])
    if config["output_type"] == "generate_until":
        assert "max_gen_toks" not in config["generation_kwargs"] and size.max_gen_toks == 256
    else:
        assert size.max_gen_toks == 0 and size.requests_per_item == {"arc_challenge": 4, "hellaswag": 4,
                                                                    "winogrande": 2, "mmlu": 4}[task]
    if task == "mmlu":
        assert size.subtasks == len(list((Path(tasks_init).parent / "mmlu/default").glob("mmlu_*.yaml"))) == 57


def test_lm_evals_default_max_gen_toks_is_256():
    import inspect

    from lm_eval.models.api_models import TemplateAPI

    assert inspect.signature(TemplateAPI.__init__).parameters["max_gen_toks"].default == 256


def test_evaluation_time_of_a_multiple_choice_task_by_hand(model_dirs):
    # arc_challenge on one H100, base = variant (quant=none): 1172 items x 4 choices x 45 prompt
    # tokens, 2 x params FLOPs a token at 989 TFLOP/s (bfloat16), for base and variant.
    plan = build_plan(compose_all(["model=llama3-8b", f"model.source={model_dirs['llama3-8b']}", "quant=none",
                                   "eval.tasks=[arc_challenge]", "serve=inprocess"])[0], count_items=True)
    expected = 2 * (2 * PUBLISHED_PARAMS["llama3-8b"] * 1172 * 4 * 45 / 989e12)
    assert plan.evaluation.seconds == pytest.approx(expected)
    assert (plan.evaluation.loglikelihood_requests, plan.evaluation.generation_requests) == (4688, 0)
    assert next(s for s in plan.stages if s.name == "evaluate").seconds == pytest.approx(expected)


def test_generation_task_costs_its_prefill_and_max_gen_toks_decoding_steps(model_dirs):
    # gsm8k, base = variant: prefill of 1319 x 800 tokens plus ceil(1319 / 16) = 83 batches x 256 steps,
    # each step reading the weights and 16 sequences' KV cache (800 + 128 tokens) at 3,350 GB/s.
    plan = build_plan(compose_all(["model=llama3-8b", f"model.source={model_dirs['llama3-8b']}", "quant=none",
                                   "eval.tasks=[gsm8k]", "serve=inprocess"])[0], count_items=True)
    params, kv_per_token = PUBLISHED_PARAMS["llama3-8b"], 2 * 32 * 8 * 128 * 2
    step = max((2 * params + 16 * kv_per_token * (800 + 128)) / 3350e9, 2 * params * 16 / 989e12)
    expected = 2 * (2 * params * 1319 * 800 / 989e12 + 83 * 256 * step)
    assert plan.evaluation.seconds == pytest.approx(expected, rel=1e-6)
    assert plan.evaluation.generation_requests == 1319 and plan.evaluation.max_gen_toks == 256


def test_fp8_quantize_counts_reading_the_base_and_writing_the_variant(model_dirs):
    # No calibration: onload once at 3,350 GB/s, read 141.1 GB at 2 GB/s, write the variant at 1 GB/s.
    plan = plan_for(model_dirs, "llama3-70b", "quant=fp8")
    quantize = next(stage for stage in plan.stages if stage.name == "quantize")
    expected = plan.base_bytes / 3350e9 + plan.base_bytes / 2e9 + plan.variant_bytes / 1e9
    assert quantize.seconds == pytest.approx(expected) and quantize.seconds > 140
    assert "2,000 MB/s" in quantize.note and "(assumed)" in quantize.note


def test_sequential_best_case_stop_is_where_the_pipelines_own_monitor_decides():
    from pipelines.evaluate.sequential import TaskMonitor
    from pipelines.plan_eval import best_case_stop

    (cfg,) = compose_all([])
    monitor, item = TaskMonitor(cfg, "multiple_choice"), {"score": 1.0, "choice_loglikelihoods": [-0.5, -2.0]}
    while not all(monitor.status(rule) == -1 for rule in monitor.blocking):
        monitor.update([([item], [item])] * cfg.eval.chunk_size)  # the variant changes no answer
    assert best_case_stop(cfg.gate, cfg.eval.chunk_size, multiple_choice=True) == monitor.items == 300


def test_plan_shows_the_saving_of_a_sequential_run_under_its_assumption(model_dirs):
    # Every task but mmlu stops at 300 items; mmlu's 57 subtasks average 246 items, all scored.
    from pipelines.plan_report import render

    plan = build_plan(compose_all(["model=llama3-70b", "quant=fp8"])[0], count_items=True)
    assert plan.sequential.items == 4 * 300 + 14042 and plan.evaluation.items == 27842
    assert plan.sequential.seconds < plan.evaluation.seconds
    line = next(line for line in render(plan).splitlines() if line.lstrip().startswith("sequential"))
    assert "~15,242 of 27,842 items" in line and "if the variant changes no answer" in line
