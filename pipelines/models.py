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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import ModelConfig
from pipelines.errors import InputError

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
    path = local_model_directory(model) if not is_hub_id(model.source) else _download(model)
    config = read_model_config(path, model)
    return BaseModel(name=model.name, path=path, fingerprint=fingerprint_directory(path), config=config)


def read_model_config(path: Path, model: ModelConfig) -> dict[str, Any]:
    """config.json of a checked checkpoint directory; refuses custom code without the opt-in."""
    check_model_directory(path, model.allow_pickle)
    config = json.loads((path / "config.json").read_text())
    if config.get("auto_map") and not model.trust_remote_code:
        raise InputError(f"model '{model.name}' ships custom code (auto_map in {path / 'config.json'}); "
                         "set model.trust_remote_code=true only if you trust its source")
    return config


def local_model_directory(model: ModelConfig) -> Path:
    if model.source == "embedded":
        from pipelines.embedded import EMBEDDED_MODEL_DIR

        return EMBEDDED_MODEL_DIR
    candidate = Path(model.source).expanduser()
    if not candidate.is_dir():
        raise InputError(f"model.source={model.source} does not exist; give a model directory or a hub id")
    return candidate.resolve()


def _download(model: ModelConfig) -> Path:
    from pipelines.hub import download

    return download(model)


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
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.eval()


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def is_hub_id(source: str) -> bool:
    return source != "embedded" and not (Path(source).expanduser().is_absolute() or source.startswith("."))


def offline_environment(model: ModelConfig) -> None:
    """A local model needs no hub; without this, every lookup retries against an unreachable host."""
    if not is_hub_id(model.source):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
