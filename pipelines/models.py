"""Where a model comes from and what it is: the one loading path for base models and variants.

`resolve_base` turns `model.source` (embedded / local directory / hub id) into a local directory
with a fingerprint; `load_causal_lm` loads any of them (dense or compressed-tensors) with
transformers, safetensors only unless the config opts in to pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from pipelines.config import ModelConfig
from pipelines.embedded import is_embedded, resolve_source
from pipelines.errors import InputError
from pipelines.hub import download, is_hub_id
from pipelines.logs import adopt_library_logs, library_output_to_log
from pipelines.shape import parse_config_json

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Files over this size are fingerprinted by size plus sampled blocks: hashing 140 GB of a 70B
# model on every run would cost minutes; a sampled hash still changes when weights are replaced.
FULL_HASH_LIMIT = 1 << 30
SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class BaseModel:
    name: str
    path: Path
    fingerprint: str
    config: dict[str, Any]


def resolve_base(model: ModelConfig) -> BaseModel:
    """Find the base model's files locally (downloading from the hub only for a hub id)."""
    path = local_model_directory(model) if not is_hub_id(model.source) else download(model)
    config = read_model_config(path, model)
    return BaseModel(name=model.name, path=path, fingerprint=fingerprint_directory(path), config=config)


def read_model_config(path: Path, model: ModelConfig, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json of a checked checkpoint directory (`config` when already read); refuses custom code without
    the opt-in."""
    check_model_directory(path, model.allow_pickle)
    config = parse_config_json(path / "config.json") if config is None else config
    if config.get("auto_map") and not model.trust_remote_code:
        raise InputError(f"model '{model.name}' ships custom code (auto_map in {path / 'config.json'}); "
                         "set model.trust_remote_code=true only if you trust its source")
    return config


def local_model_directory(model: ModelConfig) -> Path:
    candidate = resolve_source(model.source, "model")
    if is_embedded(model.source):
        return candidate
    if not candidate.is_dir():
        raise InputError(f"model.source={model.source} does not exist; give a model directory or a hub id")
    return candidate.resolve()


def check_model_directory(path: Path, allow_pickle: bool = False) -> None:
    """Refuse a directory that is not a complete, safe checkpoint, before any work is done."""
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a model directory (no config.json)")
    weights = [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    safetensors = [p for p in weights if p.suffix == ".safetensors"]
    if not safetensors and weights and not allow_pickle:
        raise InputError(f"{path} has only pickle weights ({weights[0].name}), which can run code on load; "
                         "convert to safetensors or set model.allow_pickle=true")
    if not weights:
        raise InputError(f"{path} has no weight files (*.safetensors)")
    if not safetensors:
        log.warning("loading pickle weights from %s because model.allow_pickle=true", path)
    for file in safetensors:
        _check_safetensors_header(file)


def _check_safetensors_header(file: Path) -> None:
    """A truncated or corrupt file fails here in microseconds instead of mid-load."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        raw = handle.read(8)
        header_len = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        try:
            header = json.loads(handle.read(header_len)) if 0 < header_len < size else None
        except ValueError:
            header = None
    if header is None:
        raise InputError(f"{file} is corrupt (unreadable safetensors header); re-download or re-export it")
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + header_len + max(ends, default=0) > size:
        raise InputError(f"{file} is truncated ({size} bytes, header expects more); re-download or re-export it")


def fingerprint_directory(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(_file_digest(file))
    return digest.hexdigest()[:16]


def _file_digest(file: Path) -> bytes:
    size = file.stat().st_size
    with file.open("rb") as handle:
        if size <= FULL_HASH_LIMIT:
            return hashlib.file_digest(handle, "sha256").digest()
        blocks = [size.to_bytes(8, "little")]
        for offset in range(0, size, size // 16):
            handle.seek(offset)
            blocks.append(handle.read(SAMPLE_BYTES))
        return hashlib.sha256(b"".join(blocks)).digest()


def load_causal_lm(path: Path, dtype: str = "auto", trust_remote_code: bool = False,
                   allow_pickle: bool = False, device: str | None = None):
    """Load a base model or a variant (compressed-tensors variants load as they are).

    Never pass `quantization_config=None`: transformers then skips the compressed-tensors
    quantizer and int8 weights load as raw floats, silently wrong.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": not allow_pickle}
    kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
    if device and device != "cpu":
        kwargs["device_map"] = device
    with library_output_to_log("transformers"):  # a compressed checkpoint imports compressed-tensors
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    _refuse_partial_load(path, set(info["missing_keys"]), set(info["unexpected_keys"]))
    return model.eval()


def check_causal_lm(path: Path, config: dict[str, Any], trust_remote_code: bool = False) -> None:
    """Before any work: config.json names a causal LM transformers supports, and the stored tensors
    are exactly the ones that model has (tied weights may be absent), judged from the safetensors
    headers and a weightless (meta-device) model. Otherwise transformers would fill the gaps with
    random weights and every later stage would measure noise."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    supported = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    custom = bool(config.get("auto_map"))
    if not custom and (any(a not in supported for a in architectures)
                       or not architectures and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise InputError(f"{path / 'config.json'} describes {', '.join(architectures) or model_type} "
                         f"(model_type {model_type}), not a causal LM transformers supports; "
                         "point model.source at a *ForCausalLM checkpoint")
    files = sorted(path.glob("*.safetensors"))
    if custom or not files or config.get("quantization_config"):
        return  # pickle weights, custom code or a pre-quantized base: the load-time check covers them
    _check_stored_tensors(path, files, trust_remote_code)


def _check_stored_tensors(path: Path, files: list[Path], trust_remote_code: bool) -> None:
    import torch

    adopt_library_logs()  # torchao, imported with transformers' models, warns through torch's loggers
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code),
                                                 trust_remote_code=trust_remote_code)
    stored: set[str] = set()
    for file in files:
        with safe_open(file, "pt") as handle:
            stored |= set(handle.keys())
    expected = set(model.state_dict())
    missing = expected - stored - set(getattr(model, "all_tied_weights_keys", None) or {})
    ignore_missing = getattr(model, "_keys_to_ignore_on_load_missing", None) or []
    ignore_unexpected = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []
    _refuse_partial_load(path, {k for k in missing if not any(re.search(p, k) for p in ignore_missing)},
                         {k for k in stored - expected if not any(re.search(p, k) for p in ignore_unexpected)})


def _refuse_partial_load(path: Path, missing: set[str], unexpected: set[str]) -> None:
    if not missing and not unexpected:
        return
    parts = [f"{len(keys)} {what} (e.g. {', '.join(sorted(keys)[:3])})"
             for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    raise InputError(f"{path} does not match its config.json: {'; '.join(parts)} tensors; transformers would "
                     "fill the gaps with random weights. Re-export or re-download the checkpoint")


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def offline_environment(model: ModelConfig) -> None:
    """A local model needs no hub; without this, every lookup retries against an unreachable host."""
    if not is_hub_id(model.source):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
