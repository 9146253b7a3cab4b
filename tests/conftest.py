"""Shared fixtures and record builders for the tests.

- `tiny_llama_dir` / `tiny_base`: a tiny random Llama whose shapes every scheme accepts, built once
  per session. Every Linear input dimension is a multiple of 128 (the 4-bit group size) and head_dim
  is 64, like the embedded model, so each quantizer runs on it in seconds.
- `load_level`, `make_outcome`: hand-made records for the tests of the gate, cost, tracker and report
  (import them: `from conftest import make_outcome`).
- `load_config_file`: a conf/<group>/<name>.yaml validated through its schema, as Hydra would.
- `cli_command`: the CLI as a user runs it, with every output under one folder.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipelines.config import CalibrationConfig
from pipelines.evaluate.reference import reference_path
from pipelines.evaluate.suites import resolve_include_path
from pipelines.quantize.calibration import calibration_provenance
from pipelines.records import (BenchResult, CostEstimate, CostResult, Divergence, EvalResult, Fidelity, LoadLevel,
                               Outcome, Percentiles, RuleResult, StageTime, TaskFidelity, TaskResult, Variant,
                               Verdict)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TEXT = [
    "Invoice 1042 lists 3 units at 17 dollars each, so the total is 51 dollars.",
    "The policy says a claim filed within 30 days is accepted; this claim took 12 days.",
    "Orlan Vesk is the chief auditor of the Marrow Company, founded in 1987.",
] * 4


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TINY_TEXT, trainer)
    from tokenizers import decoders

    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(directory)
    return fast


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random-weight LlamaForCausalLM (~0.4 M parameters) with its tokenizer, as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tiny_llama_dir):
    """The tiny Llama as the quantizers receive it."""
    import json

    from pipelines.models import BaseModel, fingerprint_directory

    config = json.loads((tiny_llama_dir / "config.json").read_text())
    return BaseModel("tiny", tiny_llama_dir, fingerprint_directory(tiny_llama_dir), config)


CONF = Path(__file__).resolve().parents[1] / "conf"


def cli_env() -> dict[str, str]:
    """This environment less what would make a child CLI something else: an MLFLOW_TRACKING_URI
    from outside, and the QUANTGATE_* variables a sweep run in-process by an earlier test set."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("QUANTGATE_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, "PYTHONUNBUFFERED": "1"}


def cli_command(args: list[str], tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The CLI with every output under tmp, and its environment (`cli_env`)."""
    env = cli_env()
    command = [sys.executable, "-m", "pipelines.run", *args, f"cache_dir={tmp / 'cache'}",
               f"tracking.uri=sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
               f"tracking.artifact_location={tmp / 'mlruns' / 'artifacts'}",
               f"hydra.run.dir={tmp / 'outputs'}", f"hydra.sweep.dir={tmp / 'multirun'}"]
    return command, env


def interruptible() -> None:
    """preexec_fn for a child that a test sends SIGINT: pytest started as `cmd &` from a script (no
    job control) runs with SIGINT ignored, children inherit that, and Python keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def load_config_file(path: Path | str, schema: type, **overrides):
    """A config group's YAML file (a path, or "<group>/<name>" under conf/) merged onto its schema."""
    path = Path(path) if Path(path).suffix == ".yaml" else CONF / f"{path}.yaml"
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw, overrides))


def load_level(**overrides) -> LoadLevel:
    """One measured load level (batch size 1 meeting the SLO, flat 1 ms percentiles) with `overrides`."""
    flat = Percentiles(1.0, 1.0, 1.0)
    fields = dict(batch_size=1, requests=8, repeats=3, output_tokens_per_s=100.0, output_tokens_per_s_std=0.0,
                  requests_per_s=1.0, ttft_ms=flat, itl_ms=flat, e2e_ms=flat, goodput_rps=1.0, meets_slo=True)
    return LoadLevel(**{**fields, **overrides})


T0 = 1_700_000_000.0  # the stages' start in make_outcome, Unix seconds: long before a test logs them


def make_outcome(tmp: Path, name: str = "gptq", decision: str | None = "PROMOTE", error: str | None = None) -> Outcome:
    """A complete outcome of a W4A16 variant of "tiny-llama" (checkpoint and items files under tmp)."""
    checkpoint = tmp / f"ckpt-{name}"
    checkpoint.mkdir(exist_ok=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    items = tmp / f"items-{name}.jsonl"
    items.write_text('{"doc_id": 0, "correct": 1}\n')
    variant = Variant(name=name, base="tiny-llama", backend="llmcompressor", method="gptq", scheme="W4A16",
                      checkpoint_dir=str(checkpoint), size_bytes=7, content_hash=f"hash-{name}", cache_key="k",
                      quantize_seconds=8.0, from_cache=False, versions={"llmcompressor": "0.14.0.1"})
    # Provenance as the quantize and evaluate stages record it (embedded calibration, suites, reference text).
    variant.calibration_source, variant.calibration_hash = calibration_provenance(CalibrationConfig(source="embedded"))
    task_result = TaskResult(task="qg_invoice", version="1.0", output_type="multiple_choice", metric="acc",
                             value=0.79, stderr=0.02, n=200, items_path=str(items))
    evaluation = EvalResult(model=name, model_hash="h", settings={"reference_text_hash": "ref0123"}, settings_hash="s",
                            suite_hashes={"qg_invoice": "abc"}, tasks=[task_result],
                            reference_logprobs_path=None, seconds=1.0,
                            include_path=str(resolve_include_path("embedded")),
                            reference_text_path=str(reference_path("embedded")))
    fidelity = Fidelity(variant=name, reference="base", variant_hash="v", reference_hash="b", settings_hash="s",
                        tasks=[TaskFidelity(task="qg_invoice", metric="acc", n=200, base_score=0.8, variant_score=0.79,
                                            delta=-0.01, ci_low=-0.018, ci_high=-0.002, confidence=0.95,
                                            mcnemar_p=0.25, right_to_wrong=3, wrong_to_right=1, flip_rate=0.02,
                                            choice_kl_mean=0.004)],
                        divergence=Divergence(tokens=4096, kl_mean=0.01, kl_p95=0.03, top1_agreement=0.97,
                                              base_perplexity=9.0, variant_perplexity=9.3, perplexity_ratio=1.033))
    pct = Percentiles(p50=100.0, p95=150.0, p99=180.0)
    level = load_level(batch_size=4, output_tokens_per_s=120.0, output_tokens_per_s_std=2.0, requests_per_s=3.0,
                       ttft_ms=pct, itl_ms=pct, e2e_ms=pct, goodput_rps=3.0)
    bench = BenchResult(variant=name, engine="hf", device="cpu", levels=[level], knee_batch_size=4,
                        peak_memory_bytes=10**8, memory_kind="rss", checkpoint_bytes=7)
    cost = CostResult(variant=name, target_qps=1.0, headroom=0.25, projected=[], decode_roofline_fraction=0.4,
                      measured=CostEstimate(hardware="cpu-2core", basis="measured", price_per_hour=0.1,
                                            output_tokens_per_s=120.0, usd_per_million_output_tokens=0.23,
                                            replicas_for_target=1, monthly_usd=73.0))
    verdict = None if decision is None else Verdict(
        variant=name, decision=decision, policy="default", reasons=["qg_invoice: drop within tolerance"],
        rules=[RuleResult(rule="accuracy", scope="qg_invoice", blocking=True, status="PASS", observed=0.01,
                          bound=0.018, threshold=0.02, message="non-inferior")])
    return Outcome(variant_name=name, model="tiny-llama", variant=variant, base_eval=evaluation,
                   variant_eval=evaluation, fidelity=fidelity, bench=bench, cost=cost, verdict=verdict, error=error,
                   stages=[StageTime("quantize", T0, T0 + 300.0, from_cache=True),
                           StageTime("evaluate", T0 + 300.0, T0 + 420.5), StageTime("gate", T0 + 420.5, T0 + 421.0)])
