"""Explicit registries: one dict per seam, name -> "module:attribute", imported lazily.

Adding a backend is a new module, a YAML in conf/ and one line here. Nothing heavy (torch,
llm-compressor, vLLM, MLflow) is imported until a backend is actually built.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from pipelines.errors import ConfigError

# quant.backend=none (the baseline) needs no quantizer: run_quantize returns the base itself.
QUANTIZERS = {
    "llmcompressor": "pipelines.quantize.llmcompressor_backend:LLMCompressorQuantizer",
    "gptqmodel": "pipelines.quantize.gptqmodel_backend:GPTQModelQuantizer",
    "autogptq": "pipelines.quantize.legacy:AutoGPTQQuantizer",
    "autoawq": "pipelines.quantize.legacy:AutoAWQQuantizer",
}

EVAL_RUNNERS = {
    "hf": "pipelines.evaluate.lmeval_runner:LMEvalRunner",
    "vllm": "pipelines.evaluate.lmeval_runner:VLLMEvalRunner",
}

BENCH_ENGINES = {
    "hf": "pipelines.bench.engines.hf:HFEngine",
    "openai": "pipelines.bench.engines.openai:GuideLLMEngine",
}

SERVERS = {
    "inprocess": "pipelines.serve.inprocess:InProcessServer",
    "vllm": "pipelines.serve.vllm_server:VLLMServer",
    "endpoint": "pipelines.serve.endpoint:EndpointServer",
}

TRACKERS = {
    "mlflow": "pipelines.track.mlflow_tracker:MLflowTracker",
}


# A list of choices longer than this (e.g. lm-eval's ~15,000 built-in tasks) is not printed in full.
MAX_LISTED_CHOICES = 20
MAX_SUGGESTIONS = 5


def did_you_mean(kind: str, name: str, choices: list[str] | dict[str, Any], listed_by: str | None = None) -> str:
    """A one-line message for an unknown name: at most five close matches, and the valid choices
    only when there are few enough to read (else `listed_by`, a command that lists them)."""
    valid = sorted(choices)
    close = difflib.get_close_matches(name, valid, n=MAX_SUGGESTIONS)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    listed = (f"valid choices: {', '.join(valid)}" if len(valid) <= MAX_LISTED_CHOICES
              else f"{len(valid)} valid choices" + (f", listed by {listed_by}" if listed_by else ""))
    return f"unknown {kind} '{name}'{hint}; {listed}"


def check_name(registry: dict[str, str], kind: str, name: str) -> None:
    """An unknown name's one-line error, without importing the backend (preflight's first checks)."""
    if name not in registry:
        raise ConfigError(did_you_mean(kind, name, registry))


def resolve(registry: dict[str, str], kind: str, name: str) -> Any:
    """Import and return the attribute registered under `name`."""
    check_name(registry, kind, name)
    module_name, attribute = registry[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)
