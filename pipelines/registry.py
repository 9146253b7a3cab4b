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
    "vllm": "pipelines.evaluate.lmeval_runner:LMEvalRunner",
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


def did_you_mean(kind: str, name: str, choices: list[str] | dict[str, Any]) -> str:
    """A one-line message for an unknown name, with the closest valid choice when there is one."""
    valid = sorted(choices)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {kind} '{name}'{hint}; valid choices: {', '.join(valid)}"


def resolve(registry: dict[str, str], kind: str, name: str) -> Any:
    """Import and return the attribute registered under `name`."""
    if name not in registry:
        raise ConfigError(did_you_mean(kind, name, registry))
    module_name, attribute = registry[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)
