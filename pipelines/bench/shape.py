"""A checkpoint's shape as the roofline cost model needs it, read from config.json and file sizes.

Parameters are counted analytically for a Llama-style decoder (embeddings, attention with grouped
KV heads, gated MLP, norms, untied lm_head unless `tie_word_embeddings`); quantized checkpoints
pack weights, so counting tensor elements on disk would be wrong. Weight bytes are what is on disk.
Exercised by `pytest tests/test_bench.py -k shape`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import InputError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "int8": 1}


@dataclass(frozen=True)
class ModelShape:
    params: float
    layers: int
    kv_heads: int
    head_dim: int
    weight_bytes: int
    # Activation and KV-cache dtype (the checkpoint's float dtype).
    dtype: str
    # Dtype the matmuls run in: float8 / int8 when activations are quantized, else `dtype`.
    compute_dtype: str

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every layer for one token of context."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]


def read_model_shape(checkpoint_dir: str | Path) -> ModelShape:
    directory = Path(checkpoint_dir)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError(f"{directory} has no config.json; cannot read the model shape for the cost model")
    config = json.loads(config_path.read_text())
    text = config.get("text_config", config)
    try:
        heads = text["num_attention_heads"]
        shape = dict(layers=text["num_hidden_layers"], kv_heads=text.get("num_key_value_heads") or heads,
                     head_dim=text.get("head_dim") or text["hidden_size"] // heads)
        params = llama_parameter_count(text)
    except KeyError as missing:
        raise InputError(f"{config_path} lacks {missing}; the cost model needs a decoder config") from missing
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    if dtype not in DTYPE_BYTES:
        raise InputError(f"{config_path} has dtype {dtype}; expected one of {', '.join(DTYPE_BYTES)}")
    weight_bytes = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    return ModelShape(params=params, weight_bytes=weight_bytes, dtype=dtype,
                      compute_dtype=_compute_dtype(config.get("quantization_config") or {}, dtype), **shape)


def llama_parameter_count(text: dict[str, Any]) -> float:
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * text["intermediate_size"]
    per_layer = attention + mlp + 2 * hidden
    embeddings = text["vocab_size"] * hidden * (1 if text.get("tie_word_embeddings", False) else 2)
    return float(text["num_hidden_layers"] * per_layer + embeddings + hidden)


def _compute_dtype(quantization: dict[str, Any], dtype: str) -> str:
    """compressed-tensors: 8-bit input activations mean float8 or int8 matmuls; weight-only stays float."""
    for group in (quantization.get("config_groups") or {}).values():
        activations = group.get("input_activations") or {}
        if activations.get("num_bits") == 8:
            return "float8" if activations.get("type") == "float" else "int8"
    return dtype
