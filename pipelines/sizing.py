"""How big a model and its variant are, and how much memory each stage needs: from config.json alone.

No weights are read: parameters are counted from the config, bytes per parameter follow the
quantization scheme (pipelines/quantize/schemes.py), and memory per stage follows how the stage runs (llm-compressor's sequential
onloading, vLLM's weights + KV cache per GPU). Every number is an estimate; `pipelines/plan.py`
prints them and refuses what cannot fit.
Every shape is the one `ModelShape` (pipelines/shape.py, which reads config.json and counts the
parameters): the base's from config.json (`model_size`) and a planned variant's (`roofline_shape`).
Exercised by `python -m pipelines.run model=llama3-70b quant=awq plan=true`, `pytest tests/test_plan.py`
and `pytest tests/test_bench.py -k shape`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.config import ModelConfig, ParallelServerConfig, QuantConfig, RunConfig
from pipelines.errors import InputError
from pipelines.models import is_hub_id, local_model_directory
from pipelines.quantize.schemes import HESSIAN_METHODS, compute_dtype, uses_calibration, weight_format
from pipelines.shape import DTYPE_BYTES, ModelShape, llama_parameter_count, parse_config_json, shape_from_config

GB = 1e9
# vLLM's memory besides weights and KV cache on each GPU (activations, CUDA graphs, NCCL buffers): an assumption.
SERVE_OVERHEAD_GB = 2.0
TENSOR_PARALLEL_CHOICES = (1, 2, 4, 8)
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def read_config_json(model: ModelConfig, local: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The model's config.json and where it came from: a local directory (`local` when already read), the
    Hugging Face cache, model.shape."""
    if not is_hub_id(model.source):
        path = local_model_directory(model) / "config.json"
        if local is not None:
            return local, str(path)
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


def model_size(config: dict[str, Any], model: ModelConfig) -> ModelShape:
    """The base's shape from config.json, in model.dtype (else config.json's), its weights dense."""
    text = config.get("text_config", config)
    missing = [name for name in CONFIG_FIELDS if name not in text]
    if missing:
        described = ", ".join(config.get("architectures") or []) or config.get("model_type", "an unknown model")
        raise InputError(f"the config.json of model={model.name} describes {described} and lacks "
                         f"{', '.join(missing)}: point model.source at a decoder (*ForCausalLM) checkpoint")
    dtype = model.dtype if model.dtype != "auto" else str(config.get("torch_dtype") or config.get("dtype") or "float32")
    dtype = dtype if dtype in DTYPE_BYTES else "bfloat16"
    return shape_from_config(config, dtype, int(llama_parameter_count(text) * DTYPE_BYTES[dtype]), dtype)


def variant_bytes(size: ModelShape, quant: QuantConfig) -> float:
    """Bytes of the variant's weights: quantized Linear layers, the rest (embeddings, norms) in the base dtype."""
    if quant.method == "none":
        return size.base_bytes
    bits, group, scale_bytes = weight_format(quant.scheme, 8 * DTYPE_BYTES[size.dtype])
    group = quant.group_size or group
    quantized = size.linear_params + (size.lm_head_params if "lm_head" not in quant.ignore else 0.0)
    scales = quantized / group * scale_bytes if group else 0.0
    return quantized * bits / 8 + scales + (size.params - quantized) * DTYPE_BYTES[size.dtype]


def roofline_shape(size: ModelShape, weight_bytes: float, scheme: str | None) -> ModelShape:
    """The cost model's view of a checkpoint that does not exist yet."""
    return replace(size, weight_bytes=int(weight_bytes), compute_dtype=compute_dtype(scheme, size.dtype))


def quantize_memory(size: ModelShape, cfg: RunConfig) -> tuple[float, float]:
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


def kv_tokens(cfg: RunConfig, size: ModelShape) -> int:
    """Tokens of KV cache to hold: the bench's largest load, and at least one full-length sequence (vLLM's check)."""
    largest = max(cfg.bench.batch_sizes) * (cfg.bench.input_tokens + cfg.bench.output_tokens) if cfg.bench.enabled else 0
    max_model_len = cfg.serve.max_model_len if isinstance(cfg.serve, ParallelServerConfig) else None
    return max(largest, max_model_len or size.max_positions)


def serve_gb_per_gpu(size: ModelShape, weight_bytes: float, tokens: int, tp: int) -> float:
    """vLLM per GPU at tensor-parallel tp: weights / tp + KV cache (KV heads split up to their count) + overhead."""
    kv = tokens * size.kv_bytes_per_token / min(tp, size.kv_heads)
    return (weight_bytes / tp + kv) / GB + SERVE_OVERHEAD_GB


def valid_tensor_parallel(size: ModelShape, tp: int) -> bool:
    """vLLM shards attention heads evenly over the GPUs."""
    return size.heads % tp == 0


def smallest_tensor_parallel(size: ModelShape, weight_bytes: float, tokens: int, usable_gb: float) -> int | None:
    for tp in TENSOR_PARALLEL_CHOICES:
        if valid_tensor_parallel(size, tp) and serve_gb_per_gpu(size, weight_bytes, tokens, tp) <= usable_gb:
            return tp
    return None
