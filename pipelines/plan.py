"""The plan of a run, before any download or GPU hour: sizes, memory per stage, GPUs, disk, items, time, cost.

    python -m pipelines.run model=llama3-70b quant=awq plan=true        (prints it; downloads and runs nothing)

Sizes come from the model's config.json only (`pipelines/sizing.py`); times and costs are estimates
from the roofline model (`pipelines/cost.py`) and the price in conf/hardware: lower bounds, labelled
so. The normal run makes the same checks in preflight (`check_plan`) and refuses, with the fix, a
plan that cannot fit, before any output is created.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pipelines import hub, plan_eval
from pipelines.config import ParallelServerConfig, RunConfig
from pipelines.cost import decode_step_bound_s, prefill_bound_s, projected_estimate, scaled_hardware
from pipelines.embedded import is_embedded
from pipelines.errors import ConfigError, InputError
from pipelines.models import is_hub_id
from pipelines.plan_eval import EvalEstimate
from pipelines.quantize.schemes import HESSIAN_METHODS, uses_calibration
from pipelines.serve import gpu_memory_fraction, runs_here
from pipelines.sizing import (GB, ModelShape, kv_tokens, model_size, quantize_memory, read_config_json,
                              roofline_shape, serve_gb_per_gpu, smallest_tensor_parallel, valid_tensor_parallel,
                              variant_bytes)

log = logging.getLogger(__name__)

ASSUMED_DOWNLOAD_MB_S = 100
# Quantizing reads the base's weights from disk and writes the variant's: a local NVMe SSD (assumed;
# a network filesystem is slower).
ASSUMED_DISK_READ_MB_S, ASSUMED_DISK_WRITE_MB_S = 2000, 1000
# llm-compressor passes per calibration sample, per method: calibrate + propagate; AWQ adds its 20-point grid.
CALIBRATION_PASSES = {"rtn": 0, "gptq": 2, "awq": 22, "smoothquant_gptq": 3}
_warned: set[str] = set()


@dataclass
class Stage:
    name: str
    cpu_ram_gb: float | None
    gpu_gb: float | None  # per GPU; None where the stage uses none
    gpus: int
    seconds: float | None
    note: str = ""


@dataclass
class Plan:
    cfg: RunConfig
    size: ModelShape
    shape_source: str
    base_bytes: float
    variant_bytes: float
    download_bytes: float
    serve_gpus: int  # GPUs the run holds (tensor x pipeline parallel); 0 on CPU or against endpoints
    needed_tp: int | None
    stages: list[Stage] = field(default_factory=list)
    suites: list[tuple[str, int | None]] = field(default_factory=list)
    evaluation: EvalEstimate | None = None  # None while a suite's size is unknown
    sequential: EvalEstimate | None = None  # the same with eval.sequential=true, if the variant changed nothing
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    serving_cost: list[str] = field(default_factory=list)


def build_plan(cfg: RunConfig, count_items: bool = False, config_json: dict | None = None) -> Plan:
    """`config_json`: the local base's config.json when the caller has read it already."""
    config, source = read_config_json(cfg.model, config_json)
    size = model_size(config, cfg.model)
    plan = Plan(cfg=cfg, size=size, shape_source=source, base_bytes=size.base_bytes,
                variant_bytes=variant_bytes(size, cfg.quant),
                download_bytes=size.base_bytes if is_hub_id(cfg.model.source) else 0.0, serve_gpus=0, needed_tp=None)
    plan.warnings = real_model_warnings(cfg, size)
    _size_serving(plan)
    plan.suites = plan_eval.suite_items(cfg) if count_items else []
    plan.evaluation, plan.sequential = plan_eval.estimates(plan)
    plan.stages = _stages(plan)
    plan.serving_cost = [] if plan.problems else _serving_cost(plan)
    return plan


# Below this size a model is a toy like the embedded one (tests build 0.4 M-parameter Llamas):
# the toy suites, toy calibration text and CPU prices fit it.
REAL_MODEL_PARAMS = 100e6


def real_model_warnings(cfg: RunConfig, size: ModelShape) -> list[str]:
    """One line each for a real model paired with the embedded model's toy suites, calibration or CPU."""
    if is_embedded(cfg.model.source) or size.params < REAL_MODEL_PARAMS:
        return []
    model, found = cfg.model.name, []
    if is_embedded(cfg.eval.include_path):
        found.append(f"eval={cfg.eval.name} scores {model} on the bundled toy suites (written for the 5 M-parameter "
                     "embedded model): use eval=standard, and your own suites with eval.include_path=/path")
    if uses_calibration(cfg.quant) and is_embedded(cfg.quant.calibration.source):
        found.append(f"quant={cfg.quant.name} calibrates {model} on the embedded toy text "
                     f"({cfg.quant.calibration.num_samples} texts x {cfg.quant.calibration.max_seq_length} tokens): "
                     "use calibration=ultrachat or quant.calibration.source=/path/to/your.jsonl")
    if cfg.bench.enabled and (cfg.hardware.device == "cpu" or cfg.bench.name == "cpu"):
        found.append(f"bench={cfg.bench.name} hardware={cfg.hardware.name} benchmarks and prices {model} on a CPU: "
                     "use bench=served-gpu and your GPU's hardware (e.g. hardware=h100)")
    return found


def _size_serving(plan: Plan) -> None:
    """GPUs and tensor parallelism that serving base and variant (same engine args) needs; problems if it cannot."""
    cfg, size, hw = plan.cfg, plan.size, plan.cfg.hardware
    tokens, largest = kv_tokens(cfg, size), max(plan.base_bytes, plan.variant_bytes)
    if not runs_here(cfg):
        return
    if not hw.device.startswith("cuda"):
        need = serve_gb_per_gpu(size, largest, tokens, 1)
        if need > hw.memory_gb:
            plan.problems.append(f"{cfg.model.name} needs ~{need:.0f} GB of memory to serve but hardware={hw.name} "
                                 f"has {hw.memory_gb:g} GB: choose GPU hardware (bench=gpu hardware=h100)")
        return
    usable = hw.memory_gb * gpu_memory_fraction(cfg)
    plan.needed_tp = smallest_tensor_parallel(size, largest, tokens, usable)
    if not isinstance(cfg.serve, ParallelServerConfig):  # one GPU: in process, or a server not split over GPUs
        plan.serve_gpus = 1
        need = serve_gb_per_gpu(size, largest, tokens, 1)
        if need > hw.memory_gb:
            plan.problems.append(_one_gpu_problem(plan, need))
        return
    tp, pp = cfg.serve.tensor_parallel_size, cfg.serve.pipeline_parallel_size
    plan.serve_gpus = tp * pp
    if not valid_tensor_parallel(size, tp):
        plan.problems.append(f"serve.tensor_parallel_size={tp} must divide the {size.heads} attention heads of "
                             f"{cfg.model.name}: set serve.tensor_parallel_size={plan.needed_tp or 8}")
    elif plan.needed_tp is None:
        at_eight = serve_gb_per_gpu(size, largest, tokens, 8)
        plan.problems.append(f"{cfg.model.name} does not fit on 8 x {hw.name} (~{at_eight:.0f} GB per GPU of "
                             f"{usable:.0f} usable): choose hardware with more memory (e.g. hardware=h200)")
    elif tp * pp < plan.needed_tp:
        need = serve_gb_per_gpu(size, largest, tokens, tp * pp)
        plan.problems.append(f"serving needs {plan.needed_tp} x {hw.name} at tensor-parallel {plan.needed_tp} "
                             f"(~{need:.0f} GB per GPU at {tp * pp}, {usable:.0f} usable): "
                             f"set serve.tensor_parallel_size={plan.needed_tp}")


def _one_gpu_problem(plan: Plan, need: float) -> str:
    fix = (f"serve=vllm serve.tensor_parallel_size={plan.needed_tp}" if plan.needed_tp
           else "hardware with more memory (e.g. hardware=h200)")
    return (f"serve={plan.cfg.serve.name} loads {plan.cfg.model.name} onto one {plan.cfg.hardware.name} "
            f"({plan.cfg.hardware.memory_gb:g} GB) but it needs ~{need:.0f} GB: use {fix}")


def _stages(plan: Plan) -> list[Stage]:
    cfg, size = plan.cfg, plan.size
    gpus = plan.serve_gpus
    served = serve_gb_per_gpu(size, max(plan.base_bytes, plan.variant_bytes), kv_tokens(cfg, size), max(gpus, 1))
    per_gpu = served if gpus else None
    # Without GPUs the model, its KV cache and activations live in CPU RAM (servers run elsewhere: not here).
    ram = served if not gpus and runs_here(cfg) else None
    stages = [Stage("download", None, None, 0, plan.download_bytes / (ASSUMED_DOWNLOAD_MB_S * 1e6),
                    f"at {ASSUMED_DOWNLOAD_MB_S} MB/s (assumed)" if plan.download_bytes else "local: nothing to fetch")]
    if cfg.quant.method != "none":
        cpu, gpu = quantize_memory(size, cfg)
        on_gpu = cfg.hardware.device.startswith("cuda")
        note = ("model in CPU RAM, " + ("one layer at a time on the GPU" if on_gpu else "quantized on the CPU")
                + f"; weights read at {ASSUMED_DISK_READ_MB_S:,} MB/s, written at {ASSUMED_DISK_WRITE_MB_S:,} MB/s "
                "(assumed)")
        stages.append(Stage("quantize", cpu / GB, gpu / GB if on_gpu else None, 1 if on_gpu else 0,
                            _quantize_seconds(plan), note))
    if plan.evaluation is not None:
        stages.append(Stage("evaluate", ram, per_gpu, gpus, plan.evaluation.seconds,
                            f"base + variant, each {plan.evaluation.requests()}"))
    else:
        per_thousand = plan_eval.estimate(plan, [("", 1000)]).seconds
        stages.append(Stage("evaluate", ram, per_gpu, gpus, None,
                            f"~{duration(per_thousand)} per 1,000 items (base + variant)"))
    if cfg.bench.enabled:
        stages.append(Stage("benchmark", ram, per_gpu, gpus, _bench_seconds(plan), "base + variant, every level"))
    return stages


def _quantize_seconds(plan: Plan) -> float:
    """Roofline lower bound on one GPU: calibration forward passes, GPTQ's Hessians, the weights onloaded
    once, plus reading the base from disk and writing the variant (FP8 has no calibration: this is its time)."""
    cfg, size = plan.cfg, plan.size
    hw = scaled_hardware(cfg, 1)
    flops = hw.peak_dense_tflops.get(size.dtype, max(hw.peak_dense_tflops.values(), default=1.0)) * 1e12
    tokens = cfg.quant.calibration.num_samples * cfg.quant.calibration.max_seq_length if uses_calibration(cfg.quant) else 0
    passes = CALIBRATION_PASSES.get(cfg.quant.method, 2)
    seconds = passes * 2 * size.params * tokens / flops + plan.base_bytes / (hw.memory_bandwidth_gb_s * 1e9)
    if cfg.quant.method in HESSIAN_METHODS:
        widths = [size.hidden] * 5 + [size.heads * size.head_dim, size.intermediate]
        seconds += size.layers * sum(2 * tokens * w * w for w in widths) / flops
    disk = plan.base_bytes / (ASSUMED_DISK_READ_MB_S * 1e6) + plan.variant_bytes / (ASSUMED_DISK_WRITE_MB_S * 1e6)
    return seconds + disk


def _bench_seconds(plan: Plan) -> float:
    bench, hw = plan.cfg.bench, scaled_hardware(plan.cfg, plan.serve_gpus)
    context = bench.input_tokens + bench.output_tokens / 2
    total = 0.0
    for weights, scheme in ((plan.base_bytes, None), (plan.variant_bytes, plan.cfg.quant.scheme)):
        shape = roofline_shape(plan.size, weights, scheme)
        for batch in bench.batch_sizes:
            batches = math.ceil(bench.requests_per_level / batch) * bench.repeats + math.ceil(bench.warmup_requests / batch)
            latency = (prefill_bound_s(shape, hw, batch, bench.input_tokens)
                       + bench.output_tokens * decode_step_bound_s(shape, hw, batch, context))
            total += batches * latency
    return total


def _serving_cost(plan: Plan) -> list[str]:
    """Projected $ per 1M output tokens at the bench's load for base and variant (roofline, a lower bound)."""
    if not plan.serve_gpus:
        return []
    hw, lines = scaled_hardware(plan.cfg, plan.serve_gpus), []
    for name, weights, scheme in (("base", plan.base_bytes, None),
                                  (plan.cfg.quant.name, plan.variant_bytes, plan.cfg.quant.scheme)):
        estimate = projected_estimate(roofline_shape(plan.size, weights, scheme), hw, plan.cfg.bench)
        if estimate is not None:
            lines.append(f"{name}: ${estimate.usd_per_million_output_tokens:.3f} per 1M output tokens at batch "
                         f"{estimate.batch_size}; {estimate.replicas_for_target} replica(s) for "
                         f"{plan.cfg.bench.target_qps:g} QPS, ${estimate.monthly_usd:,.0f}/month")
    return lines


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def check_plan(cfg: RunConfig, config_json: dict | None = None) -> None:
    """Preflight: warn once per line, refuse a plan that cannot fit, then check this machine and the hub."""
    plan = build_plan(cfg, config_json=config_json)
    for warning in plan.warnings:
        if warning not in _warned:
            _warned.add(warning)
            log.warning(warning)
    if plan.problems:
        raise ConfigError(plan.problems[0])
    _check_this_machine(plan)


def _check_this_machine(plan: Plan) -> None:
    cfg, hw = plan.cfg, plan.cfg.hardware
    gpus = max((stage.gpus for stage in plan.stages), default=0)
    if hw.device.startswith("cuda") and gpus:
        import torch

        found = torch.cuda.device_count()
        if found < gpus:
            raise InputError(f"the plan needs {gpus} x {hw.name} (CUDA) and this machine has {found}: "
                             "run on a machine that has them (plan=true shows the plan anywhere)")
    quantize = next((stage for stage in plan.stages if stage.name == "quantize"), None)
    if quantize is not None:
        total = psutil.virtual_memory().total
        if quantize.cpu_ram_gb * GB > total:
            raise InputError(f"quantizing {cfg.model.name} needs ~{quantize.cpu_ram_gb:.0f} GB of CPU RAM (llm-compressor "
                             f"keeps the model in CPU memory) and this machine has {total / GB:.0f} GB")
    variant = plan.variant_bytes if cfg.quant.method != "none" else 0.0
    hub.check_access_and_room(cfg.model, Path(cfg.cache_dir), variant, cfg.quant.name)
