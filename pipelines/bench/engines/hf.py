"""transformers `generate` as a bench engine (CPU or CUDA): static batches, a clock on every step.

A streamer's `put` is called once with the prompt and then once per decoding step with that
step's tokens for the whole batch, so every request of a batch shares the step timestamps.
Exercised by `pytest tests/test_bench.py -k hf_engine`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import psutil
from transformers.generation.streamers import BaseStreamer

from pipelines.bench.conditions import cpu_model
from pipelines.bench.engines import RequestTiming
from pipelines.config import ModelConfig
from pipelines.models import load_causal_lm

# Resident-set sampling period: short against a decode step on CPU (milliseconds), cheap to read.
RSS_SAMPLE_SECONDS = 0.005


class StepClock(BaseStreamer):
    """Records `time.perf_counter()` at each decoding step; the first `put` (the prompt) is skipped."""

    def __init__(self, synchronize: Callable[[], None]):
        self.synchronize = synchronize
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        # On GPU kernels run asynchronously: wait for them so the clock reads when the token exists.
        self.synchronize()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        return None


class KernelRssPeak:
    """Peak resident set size of this whole process (weights, activations, Python, libraries) as the
    Linux kernel tracks it (VmHWM): exact, no sampling; writing "5" to clear_refs restarts it."""

    kind = "process_rss_peak"

    @staticmethod
    def available() -> bool:
        try:
            KernelRssPeak().reset()
            return True
        except OSError:
            return False

    def reset(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise OSError("no VmHWM in /proc/self/status")


class SampledRssPeak:
    """Where the kernel's peak cannot be reset (not Linux): the process RSS sampled every
    RSS_SAMPLE_SECONDS by a thread, so a spike shorter than the period can be missed."""

    kind = "process_rss_peak_sampled"

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        self._halt()
        self._peak = self._process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="rss-peak-sampler")
        self._thread.start()

    def peak(self) -> int:
        self._halt()
        return max(self._peak, self._process.memory_info().rss)

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self._peak = max(self._peak, self._process.memory_info().rss)


class HFEngine:
    name = "hf"
    libraries = ("torch", "transformers", "compressed-tensors")
    runs_levels = False

    @classmethod
    def check(cls, cfg) -> None:
        """Static batches need nothing beyond the common bench checks (bench.check_bench)."""

    def __init__(self, checkpoint_dir: Path, model: ModelConfig, device: str = "cpu", num_threads: int | None = None):
        import torch

        self._torch = torch
        if num_threads:
            # bench.params.num_threads: fewer intra-op threads than cores avoids stalls on a shared machine.
            torch.set_num_threads(num_threads)
        self.device = device
        self.on_gpu = device.startswith("cuda")
        self.model = load_causal_lm(Path(checkpoint_dir), model.dtype, model.trust_remote_code,
                                    model.allow_pickle, device)
        self._rss = None if self.on_gpu else (KernelRssPeak() if KernelRssPeak.available() else SampledRssPeak())
        self.memory_kind = "cuda_max_allocated" if self.on_gpu else self._rss.kind

    def run_batch(self, prompts: list[list[int]], output_tokens: int) -> list[RequestTiming]:
        torch = self._torch
        input_ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        clock = StepClock(self._synchronize)
        self._synchronize()
        submit = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=clock,
                # min == max suppresses EOS until the last step: every request yields exactly N tokens.
                max_new_tokens=output_tokens, min_new_tokens=output_tokens, do_sample=False,
                pad_token_id=self._pad_token_id())
        generated = output.shape[1] - input_ids.shape[1]
        if generated != output_tokens or len(clock.times) != output_tokens:
            raise RuntimeError(f"generate produced {generated} tokens and {len(clock.times)} clock readings; "
                               f"expected {output_tokens}")
        return [RequestTiming(submit_s=submit, token_times_s=list(clock.times)) for _ in prompts]

    def reset_peak_memory(self) -> None:
        if self.on_gpu:
            self._torch.cuda.reset_peak_memory_stats()
        else:
            self._rss.reset()

    def peak_memory(self) -> int:
        """GPU: peak bytes held by tensors (caching-allocator slack and CUDA context excluded).
        CPU: peak RSS of the whole process since the reset (see KernelRssPeak / SampledRssPeak)."""
        if self.on_gpu:
            return int(self._torch.cuda.max_memory_allocated())
        return int(self._rss.peak())

    def device_name(self) -> str:
        if self.on_gpu:
            return self._torch.cuda.get_device_name()
        return f"{cpu_model()} ({self._torch.get_num_threads()} torch threads)"

    def _synchronize(self) -> None:
        if self.on_gpu:
            self._torch.cuda.synchronize()

    def _pad_token_id(self) -> int | None:
        config = self.model.generation_config
        if config.pad_token_id is not None:
            return config.pad_token_id
        eos = config.eos_token_id
        return eos[0] if isinstance(eos, list) else eos
