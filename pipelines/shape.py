"""A decoder's shape, read from its config.json: the one shape class and the one config.json reader.

`parse_config_json` is the only place a checkpoint's config.json is read; `shape_from_config`
turns its fields into the `ModelShape` that sizing, the plan, the roofline cost model and the
Variant record (its `shape`, read once by the quantize stage) all use. Parameters are counted
analytically for a Llama-style decoder (embeddings, attention with grouped KV heads, gated MLP,
norms, untied lm_head unless `tie_word_embeddings`): quantized checkpoints pack weights, so counting
tensor elements on disk would be wrong. Imports nothing heavy (records.py carries the class).
Exercised by `pytest tests/test_bench.py -k shape` and `pytest tests/test_provenance.py`.
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
    # Bytes of the weights: on disk for a written checkpoint, as planned for one not written yet.
    weight_bytes: int
    # Activation and KV-cache dtype (the checkpoint's float dtype).
    dtype: str
    # Dtype the matmuls run in: float8 / int8 when activations are quantized, else `dtype`.
    compute_dtype: str
    # The rest of config.json's shape, which sizing and the plan need (None where a caller builds a
    # shape for the roofline alone).
    hidden: int | None = None
    intermediate: int | None = None
    heads: int | None = None
    vocab: int | None = None
    max_positions: int | None = None
    linear_params: float | None = None  # decoder Linear weights: what quantization compresses
    lm_head_params: float | None = None  # 0 when tied to the embeddings

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every layer for one token of context."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    @property
    def base_bytes(self) -> float:
        """Every parameter in `dtype`: the unquantized model's weights."""
        return self.params * DTYPE_BYTES[self.dtype]

    @property
    def layer_bytes(self) -> float:
        return self.linear_params / self.layers * DTYPE_BYTES[self.dtype]


def parse_config_json(path: Path) -> dict[str, Any]:
    """A checkpoint's config.json as a dict; an InputError naming the file when it is not one."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}); restore the checkpoint's config.json "
                         "(re-download or re-save it)") from None
    if not isinstance(config, dict):
        raise InputError(f"{path} holds a JSON {type(config).__name__}, not an object of model fields; "
                         "restore the checkpoint's config.json")
    return config


def shape_from_config(config: dict[str, Any], dtype: str, weight_bytes: int, compute_dtype: str) -> ModelShape:
    """The shape config.json describes (its `text_config` for multimodal models); KeyError names a missing field."""
    text = config.get("text_config", config)
    heads, hidden, layers = text["num_attention_heads"], text["hidden_size"], text["num_hidden_layers"]
    kv_heads, head_dim = text.get("num_key_value_heads") or heads, text.get("head_dim") or hidden // heads
    linear = layers * (hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * text["intermediate_size"])
    tied = text.get("tie_word_embeddings", False)
    return ModelShape(params=llama_parameter_count(text), layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                      weight_bytes=weight_bytes, dtype=dtype, compute_dtype=compute_dtype, hidden=hidden,
                      intermediate=text["intermediate_size"], heads=heads, vocab=text["vocab_size"],
                      max_positions=text.get("max_position_embeddings") or 2048, linear_params=float(linear),
                      lm_head_params=0.0 if tied else float(text["vocab_size"] * hidden))


def llama_parameter_count(text: dict[str, Any]) -> float:
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * text["intermediate_size"]
    per_layer = attention + mlp + 2 * hidden
    embeddings = text["vocab_size"] * hidden * (1 if text.get("tie_word_embeddings", False) else 2)
    return float(text["num_hidden_layers"] * per_layer + embeddings + hidden)
