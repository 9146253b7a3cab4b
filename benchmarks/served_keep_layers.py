"""A keep-k checkpoint is served by vLLM unchanged (BENCHMARKS.md, "Layer sensitivity on the embedded model").

    HF_HUB_OFFLINE=1 python benchmarks/served_keep_layers.py serve.python=.venv-vllm/bin/python

Quantizes the embedded model with fp8 and decoder layer 0 kept unquantized (`quant.ignore` gets the
layer's `re:` target, as `pipelines/search/candidates.py` writes it), serves the checkpoint through
the project's vLLM backend, and compares the prompt log-probabilities vLLM returns (`echo` +
`logprobs`) with transformers' on the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

import torch

from pipelines.models import load_causal_lm, load_tokenizer, resolve_base
from pipelines.pipeline import compose_config
from pipelines.quantize import run_quantize
from pipelines.search.sensitivity import layer_target
from pipelines.serve import make_server

PROMPT = "Invoice 4417 from Brightwell Supply lists 3 units at 12 dollars each. The total is"


def served_logprobs(served, ids: list[int]) -> list[float]:
    body = json.dumps({"model": served.model, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0,
                       "temperature": 0}).encode()
    request = urllib.request.Request(served.base_url + "/completions", body, {"Content-Type": "application/json"})
    answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
    return answer["choices"][0]["logprobs"]["token_logprobs"][1:len(ids)]


def main(overrides: list[str]) -> None:
    cfg = compose_config(["quant=fp8", "serve=vllm", "model.dtype=float32", *overrides])
    base = resolve_base(cfg.model)
    quant = dataclasses.replace(cfg.quant, name="fp8-keep1", ignore=[*cfg.quant.ignore, layer_target(0)])
    variant = run_quantize(quant, base, Path(cfg.cache_dir))
    checkpoint = Path(variant.checkpoint_dir)
    ids = load_tokenizer(checkpoint)(PROMPT)["input_ids"]
    with torch.no_grad():
        logprobs = load_causal_lm(checkpoint, "float32")(torch.tensor([ids])).logits[0].log_softmax(-1)
    in_process = [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]
    with make_server(cfg).serve(variant, "variant", Path(tempfile.mkdtemp())) as served:
        served_values = served_logprobs(served, ids)
        engine = f"{served.engine} {served.engine_version} ({served.engine_args['dtype']})"
    difference = max(abs(a - b) for a, b in zip(in_process, served_values))
    print(f"{variant.name} ({variant.content_hash}) on {engine}: {len(ids)} prompt tokens, "
          f"max |log-prob difference| vs transformers = {difference:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])
