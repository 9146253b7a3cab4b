"""Quantize stage: base model -> `Variant`, a cached compressed-tensors checkpoint (or the base itself).

`python -m pipelines.run quant=awq` runs it first. Checkpoints live under
`<cache_dir>/variants/<model>/<quant name>-<key>`, keyed by the base fingerprint, the quant config,
the calibration texts and the library versions, so a rerun or a resumed sweep reuses them
(`overwrite=true` redoes them). A checkpoint is built in a scratch directory and renamed into place
with its manifest (every file's size and sha256) written last: a killed run leaves nothing that
looks finished, and a cached checkpoint whose files changed is set aside and built again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pipelines import storage
from pipelines.config import QuantConfig
from pipelines.models import BaseModel
from pipelines.errors import InputError
from pipelines.quantize.calibration import calibration_provenance, load_calibration
from pipelines.quantize.schemes import uses_calibration
from pipelines.records import Variant
from pipelines.registry import QUANTIZERS, resolve
from pipelines.shape import ModelShape, checkpoint_shape, read_model_shape

log = logging.getLogger(__name__)

class Quantizer(Protocol):
    """A quantization backend (registry.QUANTIZERS, conf/quant/*.yaml); its module imports nothing heavy."""

    # Libraries whose version changes the backend's output: part of the cache key and the manifest.
    libraries: ClassVar[tuple[str, ...]]

    @staticmethod
    def check(quant: QuantConfig) -> None:
        """Preflight, no model needed: raise a ConfigError for a quant config this backend cannot write."""

    @staticmethod
    def check_compatible(model_config: dict[str, Any], quant: QuantConfig) -> None:
        """Raise a ConfigError when `quant` cannot work on a model with this config.json (e.g. group size)."""

    def quantize(self, base: BaseModel, quant: QuantConfig, calibration: list[str], out_dir: Path,
                 seed: int) -> None:
        """Write a complete checkpoint of `base` quantized per `quant`, tokenizer included, into out_dir."""


def run_quantize(quant: QuantConfig, base: BaseModel, cache_dir: Path, seed: int = 0,
                 overwrite: bool = False) -> Variant:
    """The variant `quant` of `base`: the base itself for quant=none, else a (cached) checkpoint.

    Trusts a preflighted config (pipelines/preflight.py checked the backend, scheme and group size)."""
    if quant.backend == "none":
        return _baseline(quant, base)
    calibration = load_calibration(quant.calibration, base.path) if uses_calibration(quant) else []
    versions = storage.library_versions(*resolve(QUANTIZERS, "quantization backend", quant.backend).libraries)
    key = variant_key(base, quant, calibration, versions, seed)
    out_dir = Path(cache_dir) / "variants" / base.name / f"{quant.name}-{key}"
    # Every file is hashed before a cached checkpoint is used (storage.cache_entry); a second job
    # asking for the same checkpoint waits for the first to write it, then reuses it.
    with storage.cache_entry(out_dir, overwrite) as manifest:
        if manifest:
            log.info("reusing cached variant at %s", out_dir)
            return with_provenance(_variant(quant, base, out_dir, key, manifest, from_cache=True), quant)
        manifest = _build(quant, base, calibration, versions, key, out_dir, seed)
    return with_provenance(_variant(quant, base, out_dir, key, manifest, from_cache=False), quant)


def variant_key(base: BaseModel, quant: QuantConfig, calibration: list[str], versions: dict[str, str],
                seed: int) -> str:
    """Cache key; calibration settings, texts and seed count only for methods that read data."""
    settings = dataclasses.asdict(quant)
    if not uses_calibration(quant):
        settings.pop("calibration")
    if not quant.precision_overrides:
        # Absent from the key when unused, so checkpoints cached before the field existed keep their keys.
        settings.pop("precision_overrides")
    data = {"texts": storage.stable_hash(calibration), "seed": seed} if calibration else None
    return storage.stable_hash({"base": base.fingerprint, "quant": settings, "calibration": data,
                                "versions": versions})


def _build(quant: QuantConfig, base: BaseModel, calibration: list[str], versions: dict[str, str], key: str,
           out_dir: Path, seed: int) -> dict[str, Any]:
    quantizer: Quantizer = resolve(QUANTIZERS, "quantization backend", quant.backend)()
    log.info("quantizing %s with %s/%s (%s, %d calibration texts) -> %s",
             base.name, quant.backend, quant.method, quant.scheme, len(calibration), out_dir)
    started = time.perf_counter()
    with storage.atomic_directory(out_dir) as scratch:
        quantizer.quantize(base, quant, calibration, scratch, seed)
        log.info("hashing the checkpoint")
        manifest = {
            "what": f"{base.name} quantized with {quant.name}", "cache_key": key,
            "base": {"name": base.name, "fingerprint": base.fingerprint, "path": str(base.path)},
            "engine": quant.backend, "method": quant.method, "scheme": quant.scheme,
            "quant": dataclasses.asdict(quant), "calibration_texts": len(calibration),
            "versions": versions, "size_bytes": storage.directory_size(scratch),
            "content_hash": storage.hash_directory(scratch), "seed": seed,
            "seconds": round(time.perf_counter() - started, 3),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        # Last: a directory with a manifest is a finished checkpoint.
        storage.write_manifest(scratch, manifest)
    log.info("variant %s written to %s (%.1f MB, %.1f s)", quant.name, out_dir,
             manifest["size_bytes"] / 1e6, manifest["seconds"])
    return manifest


def _variant(quant: QuantConfig, base: BaseModel, out_dir: Path, key: str, manifest: dict[str, Any],
             from_cache: bool) -> Variant:
    return Variant(name=quant.name, base=base.name, backend=quant.backend, method=quant.method,
                   scheme=quant.scheme, checkpoint_dir=str(out_dir), size_bytes=manifest["size_bytes"],
                   content_hash=manifest["content_hash"], cache_key=key,
                   quantize_seconds=manifest["seconds"], from_cache=from_cache, versions=manifest["versions"])


def with_provenance(variant: Variant, quant: QuantConfig) -> Variant:
    """The variant with its shape (config.json read here, once) and calibration data recorded."""
    source, digest = calibration_provenance(quant.calibration) if uses_calibration(quant) else (None, None)
    return dataclasses.replace(variant, shape=_shape(Path(variant.checkpoint_dir)), calibration_source=source,
                               calibration_hash=digest)


def _shape(directory: Path, config: dict[str, Any] | None = None) -> ModelShape | None:
    """None where config.json describes no decoder: the cost stage, which needs the shape, says why."""
    try:
        return read_model_shape(directory) if config is None else checkpoint_shape(directory, config)
    except InputError:
        return None


def _baseline(quant: QuantConfig, base: BaseModel) -> Variant:
    """quant=none: the base model is the variant; nothing is written (its config.json was read by resolve_base)."""
    log.info("quant=none: using the base model at %s unchanged", base.path)
    return Variant(name=quant.name, base=base.name, backend="none", method="none", scheme=None,
                   checkpoint_dir=str(base.path), size_bytes=storage.directory_size(base.path),
                   content_hash=base.fingerprint, cache_key=base.fingerprint, quantize_seconds=0.0,
                   from_cache=False, versions={}, shape=_shape(base.path, base.config))
