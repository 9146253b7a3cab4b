"""How big a model and its variant are, and how much memory each stage needs: from config.json alone.

No weights are read: parameters are counted from the config, bytes per parameter follow the
quantization scheme (pipelines/quantize/schemes.py), and memory per stage follows how the stage runs (llm-compressor's sequential
onloading, vLLM's weights + KV cache per GPU). Every number is an estimate; `pipelines/plan.py`
prints them and refuses what cannot fit.
A written checkpoint's `ModelShape` (the roofline cost model's input, `read_model_shape`) is counted
the same way: analytically for a Llama-style decoder (embeddings, attention with grouped KV heads,
gated MLP, norms, untied lm_head unless `tie_word_embeddings`), since quantized checkpoints pack
weights and counting tensor elements on disk would be wrong; its weight bytes are what is on disk.
Exercised by `python -m pipelines.run model=llama3-70b quant=awq plan=true`, `pytest tests/test_plan.py`
and `pytest tests/test_bench.py -k shape`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import ModelConfig, ParallelServerConfig, QuantConfig, RunConfig
from pipelines.errors import InputError
from pipelines.quantize.schemes import HESSIAN_METHODS, compute_dtype, uses_calibration, weight_format

GB = 1e9
# vLLM's memory besides weights and KV cache on each GPU (activations, CUDA graphs, NCCL buffers): an assumption.
SERVE_OVERHEAD_GB = 2.0
TENSOR_PARALLEL_CHOICES = (1, 2, 4, 8)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "int8": 1}
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


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


@dataclass(frozen=True)
class ModelSize:
    params: float
    linear_params: float  # decoder Linear weights: what quantization compresses
    lm_head_params: float  # 0 when tied to the embeddings
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int
    dtype: str

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[self.dtype]

    @property
    def base_bytes(self) -> float:
        return self.params * DTYPE_BYTES[self.dtype]

    @property
    def layer_bytes(self) -> float:
        return self.linear_params / self.layers * DTYPE_BYTES[self.dtype]


def read_config_json(model: ModelConfig) -> tuple[dict[str, Any], str]:
    """The model's config.json and where it came from: a local directory, the Hugging Face cache, model.shape."""
    from pipelines.models import is_hub_id, local_model_directory, parse_config_json

    if not is_hub_id(model.source):
        path = local_model_directory(model) / "config.json"
        if not path.is_file():
            raise InputError(f"{path.parent} is not a model directory (no config.json)")
        return parse_config_json(path), str(path)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model.source, "config.json", revision=model.revision)
    if isinstance(cached, str):
        return parse_config_json(Path(cached)), cached
    if model.shape:
        return dict(model.shape), f"model.shape in conf/model/{model.name}.yaml (nothing downloaded)"
    raise InputError(f"the size of {model.source} is unknown here: fetch its config.json "
                     f"(hf download {model.source} config.json) or set model.shape to its config.json fields")


def model_size(config: dict[str, Any], model: ModelConfig) -> ModelSize:
    text = config.get("text_config", config)
    missing = [name for name in CONFIG_FIELDS if name not in text]
    if missing:
        described = ", ".join(config.get("architectures") or []) or config.get("model_type", "an unknown model")
        raise InputError(f"the config.json of model={model.name} describes {described} and lacks "
                         f"{', '.join(missing)}: point model.source at a decoder (*ForCausalLM) checkpoint")
    heads, hidden, layers = text["num_attention_heads"], text["hidden_size"], text["num_hidden_layers"]
    kv_heads, head_dim = text.get("num_key_value_heads") or heads, text.get("head_dim") or hidden // heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * text["intermediate_size"]
    tied = text.get("tie_word_embeddings", False)
    dtype = model.dtype if model.dtype != "auto" else str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return ModelSize(params=llama_parameter_count(text), linear_params=float(layers * per_layer),
                     lm_head_params=0.0 if tied else float(text["vocab_size"] * hidden), layers=layers, hidden=hidden,
                     intermediate=text["intermediate_size"], heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                     vocab=text["vocab_size"], max_positions=text.get("max_position_embeddings") or 2048,
                     dtype=dtype if dtype in DTYPE_BYTES else "bfloat16")


def variant_bytes(size: ModelSize, quant: QuantConfig) -> float:
    """Bytes of the variant's weights: quantized Linear layers, the rest (embeddings, norms) in the base dtype."""
    if quant.method == "none":
        return size.base_bytes
    bits, group, scale_bytes = weight_format(quant.scheme, 8 * DTYPE_BYTES[size.dtype])
    group = quant.group_size or group
    quantized = size.linear_params + (size.lm_head_params if "lm_head" not in quant.ignore else 0.0)
    scales = quantized / group * scale_bytes if group else 0.0
    return quantized * bits / 8 + scales + (size.params - quantized) * DTYPE_BYTES[size.dtype]


def roofline_shape(size: ModelSize, weight_bytes: float, scheme: str | None) -> ModelShape:
    """The cost model's view of a checkpoint that does not exist yet."""
    return ModelShape(params=size.params, layers=size.layers, kv_heads=size.kv_heads, head_dim=size.head_dim,
                      weight_bytes=int(weight_bytes), dtype=size.dtype, compute_dtype=compute_dtype(scheme, size.dtype))


def quantize_memory(size: ModelSize, cfg: RunConfig) -> tuple[float, float]:
    """(CPU RAM, GPU memory) bytes to quantize: llm-compressor keeps the model in CPU RAM and onloads one
    layer at a time; calibration activations between layers are offloaded to CPU."""
    quant, cal = cfg.quant, cfg.quant.calibration
    act = DTYPE_BYTES[size.dtype]
    tokens = cal.num_samples * cal.max_seq_length if uses_calibration(quant) else 0
    cpu = size.base_bytes + tokens * size.hidden * act
    # One sample's activations inside a layer (MLP width, attention scores) while it runs on the GPU.
    batch = cal.max_seq_length * (4 * size.intermediate + 2 * size.hidden) * act if tokens else 0
    hessians = 0.0
    if quant.method in HESSIAN_METHODS:
        inputs = [size.hidden] * 5 + [size.heads * size.head_dim, size.intermediate]  # q k v gate up, o, down
        hessians = sum(width * width * 4 for width in inputs)  # float32 Hessian per Linear
    return cpu, size.layer_bytes + batch + hessians


def kv_tokens(cfg: RunConfig, size: ModelSize) -> int:
    """Tokens of KV cache to hold: the bench's largest load, and at least one full-length sequence (vLLM's check)."""
    largest = max(cfg.bench.batch_sizes) * (cfg.bench.input_tokens + cfg.bench.output_tokens) if cfg.bench.enabled else 0
    max_model_len = cfg.serve.max_model_len if isinstance(cfg.serve, ParallelServerConfig) else None
    return max(largest, max_model_len or size.max_positions)


def serve_gb_per_gpu(size: ModelSize, weight_bytes: float, tokens: int, tp: int) -> float:
    """vLLM per GPU at tensor-parallel tp: weights / tp + KV cache (KV heads split up to their count) + overhead."""
    kv = tokens * size.kv_bytes_per_token / min(tp, size.kv_heads)
    return (weight_bytes / tp + kv) / GB + SERVE_OVERHEAD_GB


def valid_tensor_parallel(size: ModelSize, tp: int) -> bool:
    """vLLM shards attention heads evenly over the GPUs."""
    return size.heads % tp == 0


def smallest_tensor_parallel(size: ModelSize, weight_bytes: float, tokens: int, usable_gb: float) -> int | None:
    for tp in TENSOR_PARALLEL_CHOICES:
        if valid_tensor_parallel(size, tp) and serve_gb_per_gpu(size, weight_bytes, tokens, tp) <= usable_gb:
            return tp
    return None


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
                      compute_dtype=_checkpoint_compute_dtype(config.get("quantization_config") or {}, dtype), **shape)


def llama_parameter_count(text: dict[str, Any]) -> float:
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * text["intermediate_size"]
    per_layer = attention + mlp + 2 * hidden
    embeddings = text["vocab_size"] * hidden * (1 if text.get("tie_word_embeddings", False) else 2)
    return float(text["num_hidden_layers"] * per_layer + embeddings + hidden)


def _checkpoint_compute_dtype(quantization: dict[str, Any], dtype: str) -> str:
    """compressed-tensors: 8-bit input activations mean float8 or int8 matmuls; weight-only stays float."""
    for group in (quantization.get("config_groups") or {}).values():
        activations = group.get("input_activations") or {}
        if activations.get("num_bits") == 8:
            return "float8" if activations.get("type") == "float" else "int8"
    return dtype
