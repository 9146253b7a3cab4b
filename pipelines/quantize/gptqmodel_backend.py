"""GPTQModel backend: GPTQ / AWQ weight-only checkpoints in GPTQModel's own formats.

`python -m pipelines.run quant=gptq quant.backend=gptqmodel` (or `quant=awq quant.backend=gptqmodel`).
GPTQModel is the maintained successor of AutoGPTQ/AutoAWQ; its output (config.json
`quantization_config.quant_method` gptq / awq) is what vLLM and SGLang serve, and transformers loads it
with `optimum` installed. Optional extra: `pip install -e '.[gptqmodel]'`.

Settings: bits from `quant.scheme` (W4A16 -> 4, W4A16_ASYM -> 4 asymmetric), `quant.group_size`
(default 128), `quant.params` passed through to GPTQModel's GPTQConfig / AWQConfig (e.g. GPTQ
`damp_percent`, `act_group_aware`). Calibration texts are tokenized here and truncated to
`quant.calibration.max_seq_length`, so both engines see the same tokens.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipelines.config import QuantConfig
from pipelines.errors import ConfigError
from pipelines.models import BaseModel, load_tokenizer
from pipelines.quantize.compat import check_groups_fit
from pipelines.quantize.schemes import WEIGHT_ONLY_GROUP_SIZE, check_scheme, weight_only_int

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[gptqmodel]'"
METHODS = ("gptq", "awq")


class GPTQModelQuantizer:
    libraries = ("gptqmodel", "transformers", "torch")

    @staticmethod
    def check(quant: QuantConfig) -> None:
        """Preflight: the package is installed and GPTQModel can write this scheme.

        Its W<n>A16 schemes are the compressed-tensors presets of the same name (same default group
        size), checked as every preset is (pipelines/quantize/schemes.py)."""
        require_gptqmodel()
        gptqmodel_settings(quant)
        check_scheme(quant)

    @staticmethod
    def check_compatible(model_config: dict[str, Any], quant: QuantConfig) -> None:
        check_groups_fit(model_config, quant)

    def quantize(self, base: BaseModel, quant: QuantConfig, calibration: list[str], out_dir: Path,
                 seed: int) -> None:
        settings = gptqmodel_settings(quant)
        if not calibration:
            raise ConfigError(f"quant.method={quant.method} with quant.backend=gptqmodel needs calibration texts; "
                              "set quant.needs_calibration=true")
        _use_all_cores()
        gptqmodel = _import_gptqmodel()
        config = build_config(quant)
        _seed_everything(seed)
        out_dir, logs_dir = Path(out_dir).resolve(), Path(out_dir).resolve().parent / "logs" / "gptqmodel"
        trusted = bool(base.config.get("auto_map"))
        tokenizer = load_tokenizer(base.path, trust_remote_code=trusted)
        samples = tokenize_calibration(tokenizer, calibration, quant.calibration.max_seq_length)
        log.info("loading base %s from %s into GPTQModel (%s, bits=%d, group_size=%d)",
                 base.name, base.path, quant.method, settings["bits"], settings["group_size"])
        model = gptqmodel.GPTQModel.load(str(base.path), config, device="cpu", trust_remote_code=trusted,
                                         dtype=quantize_dtype(base, quant.method))
        with _logs_into(logs_dir):
            log.info("quantizing %s with GPTQModel %s on %d calibration samples",
                     base.name, gptqmodel.__version__, len(samples))
            # min length 0: keep every text, as llm-compressor does (GPTQModel drops those <= 10 tokens).
            model.quantize(samples, batch_size=1, backend=_kernel(quant.method), calibration_data_min_length=0)
        log.info("saving GPTQModel checkpoint to %s", out_dir)
        model.save(str(out_dir))
        tokenizer.save_pretrained(out_dir)
        _keep_only_the_model(base, out_dir, logs_dir)


def gptqmodel_settings(quant: QuantConfig) -> dict[str, Any]:
    """Bits / group size / symmetry for `quant`, or a ConfigError; no heavy imports (preflight-safe)."""
    if quant.method not in METHODS:
        raise ConfigError(f"quant.method={quant.method} is not available with quant.backend=gptqmodel; "
                          "use gptq or awq (or quant.backend=llmcompressor)")
    # Weight-only integer schemes are the only kind GPTQModel's GPTQ/AWQ paths write.
    weight_only = weight_only_int(quant.scheme)
    if not weight_only:
        raise ConfigError(f"quant.scheme={quant.scheme} is not a weight-only scheme GPTQModel writes; "
                          "use W4A16 (or W<n>A16 / W<n>A16_ASYM, n in 2..8)")
    extra_ignores = [name for name in quant.ignore if name != "lm_head"]
    if extra_ignores or "lm_head" not in quant.ignore:
        # GPTQModel skips other modules only through `dynamic` rules, which transformers cannot load.
        raise ConfigError(f"quant.ignore={list(quant.ignore)}: quant.backend=gptqmodel keeps exactly lm_head "
                          "unquantized; set quant.ignore=[lm_head]")
    bits, symmetric = weight_only
    return {"bits": bits, "group_size": quant.group_size or WEIGHT_ONLY_GROUP_SIZE, "sym": symmetric}


def build_config(quant: QuantConfig) -> Any:
    """GPTQModel's GPTQConfig / AWQConfig (AWQ in the GEMM format vLLM serves), `quant.params` on top."""
    from gptqmodel import AWQConfig, GPTQConfig
    from gptqmodel.quantization import FORMAT

    config_class = GPTQConfig if quant.method == "gptq" else AWQConfig
    # No disk offload unless asked: it records a random temp path in config.json, so identical weights
    # would hash differently. Set quant.params.offload_to_disk=true for models that do not fit in RAM.
    kwargs = {**gptqmodel_settings(quant), "lm_head": False, "offload_to_disk": False, **quant.params}
    if quant.method == "awq":
        kwargs.setdefault("format", FORMAT.GEMM)
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"quant.params rejected by GPTQModel's {config_class.__name__}: {error}; "
                          f"see gptqmodel/quantization/config.py for its fields") from error


def tokenize_calibration(tokenizer: Any, texts: list[str], max_seq_length: int) -> list[dict[str, list[int]]]:
    """Token ids per text, cut at max_seq_length (GPTQModel itself only cuts at the model's context)."""
    encoded = tokenizer(texts, truncation=True, max_length=max_seq_length)
    return [{"input_ids": ids, "attention_mask": mask}
            for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]


def quantize_dtype(base: BaseModel, method: str) -> Any:
    """The base's own dtype where GPTQModel's CPU kernel takes it (as llm-compressor quantizes).

    GPTQModel alone would quantize a float32 model in bfloat16 on CPU (`auto_dtype` in
    gptqmodel/utils/model.py); its AWQ torch kernel accepts only float16/bfloat16, so AWQ keeps that.
    """
    import torch

    name = base.config.get("dtype") or base.config.get("torch_dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        return "auto"
    if method == "awq" and dtype not in (torch.float16, torch.bfloat16):
        log.info("AWQ with GPTQModel runs in bfloat16 (its CPU AWQ kernel takes no %s)", name)
        return torch.bfloat16
    return dtype


def _kernel(method: str) -> Any:
    """The CPU kernel to pack with: GPTQModel's AUTO picks AWQ_GEMM for AWQ, which needs a GPU."""
    from gptqmodel import BACKEND

    return BACKEND.AWQ_TORCH if method == "awq" else BACKEND.AUTO


def _use_all_cores() -> None:
    # GPTQModel defaults to half the cores for its CPU worker pool; read once, when the pool is built.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(cores))


def require_gptqmodel() -> None:
    """ConfigError naming the extra when gptqmodel is absent; finds the package without importing it."""
    if importlib.util.find_spec("gptqmodel") is None:
        raise ConfigError(f"quant.backend=gptqmodel needs the GPTQModel package, which is not installed; "
                          f"run {INSTALL_HINT}")


def _import_gptqmodel() -> Any:
    require_gptqmodel()
    try:
        import gptqmodel
    except ImportError as error:
        raise ConfigError(f"quant.backend=gptqmodel: gptqmodel is installed but does not import ({error}); "
                          f"reinstall with {INSTALL_HINT}") from error
    return gptqmodel


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _keep_only_the_model(base: BaseModel, out_dir: Path, logs_dir: Path) -> None:
    """Leave weights, configs and tokenizer only, so the content hash follows the model alone.

    GPTQModel's per-module loss table (quant_log.csv, with timings) joins its other logs, and the base's
    generation_config.json replaces the one GPTQModel rewrites (it turns on do_sample).
    """
    quant_log = out_dir / "quant_log.csv"
    if quant_log.is_file():
        logs_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(quant_log, logs_dir / f"{base.name}-{out_dir.name.strip('.')}-quant_log.csv")
    generation_config = base.path / "generation_config.json"
    if generation_config.is_file():
        shutil.copyfile(generation_config, out_dir / "generation_config.json")


@contextmanager
def _logs_into(directory: Path) -> Iterator[None]:
    """Send GPTQModel's per-layer quantization logs to `directory` instead of `./logs` in the cwd.

    gptqmodel 7.6.0 writes them under the relative module constant `_PROJECT_LOG_DIR`
    (gptqmodel/looper/loop_processor.py), read each time a processor opens its log file.
    """
    from gptqmodel.looper import loop_processor

    original = loop_processor._PROJECT_LOG_DIR
    loop_processor._PROJECT_LOG_DIR = directory
    log.info("GPTQModel quantization logs go to %s", directory)
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = original
