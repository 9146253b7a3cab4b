"""A decoder's shape, read from its config.json: the one shape class and the one config.json reader.

`parse_config_json` is the only place a checkpoint's config.json is read; `shape_from_config`
turns its fields into the `ModelShape` that sizing, the plan, the roofline cost model and the
Variant record (its `shape`, read once by the quantize stage) all use. Parameters are counted
analytically for a Llama-style decoder (embeddings, attention with grouped KV heads, gated MLP,
norms, untied lm_head unless `tie_word_embeddings`): quantized checkpoints pack weights, so counting
tensor elements on disk would be wrong. A written checkpoint's shape (`read_model_shape`) has the
weight bytes on disk; the quantize stage stores it in the Variant record, so the cost stage reads no
config.json again. Imports nothing heavy: records.py carries the class.
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


def read_model_shape(checkpoint_dir: str | Path) -> ModelShape:
    """A written checkpoint's shape; its weight bytes are what is on disk."""
    config_path = Path(checkpoint_dir) / "config.json"
    if not config_path.is_file():
        raise InputError(f"{config_path.parent} has no config.json; cannot read the model shape for the cost model")
    return checkpoint_shape(Path(checkpoint_dir), parse_config_json(config_path))


def checkpoint_shape(directory: Path, config: dict[str, Any]) -> ModelShape:
    """The shape of the checkpoint in `directory` whose config.json (already read) is `config`."""
    config_path = directory / "config.json"
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    compute = _checkpoint_compute_dtype(config.get("quantization_config") or {}, dtype)
    try:
        shape = shape_from_config(config, dtype, sum(p.stat().st_size for p in directory.glob("*.safetensors")),
                                  compute)
    except KeyError as missing:
        raise InputError(f"{config_path} lacks {missing}; the cost model needs a decoder config") from missing
    if dtype not in DTYPE_BYTES:
        raise InputError(f"{config_path} has dtype {dtype}; expected one of {', '.join(DTYPE_BYTES)}")
    return shape


def _checkpoint_compute_dtype(quantization: dict[str, Any], dtype: str) -> str:
    """compressed-tensors: 8-bit input activations mean float8 or int8 matmuls; weight-only stays float."""
    for group in (quantization.get("config_groups") or {}).values():
        activations = group.get("input_activations") or {}
        if activations.get("num_bits") == 8:
            return "float8" if activations.get("type") == "float" else "int8"
    return dtype
