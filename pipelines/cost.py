"""Cost stage: BenchResult -> CostResult ($ per 1M output tokens, replicas, monthly $).

Measured (the hardware the bench ran on, at the knee):
    usd_per_million = price_per_hour / (output_tokens_per_s * 3600) * 1e6
    replicas = ceil(target_qps * W * (1 + headroom) / B)      (Little's law: concurrency L = lambda * W)
    monthly_usd = replicas * price_per_hour * 730
  with B the knee batch size (one replica serves B requests at once) and W the level's mean E2E latency.
  No knee (no level meets the SLO) -> the same formulas at the best measured load (the level with the
  most output tokens/s), flagged slo_met=False: what was measured is reported, and said to miss the SLO.
  Saving vs base (paired bench runs only): 1 - variant $/1M / base $/1M = 1 - base tokens/s / variant
  tokens/s at each one's cost level, its estimate and interval from the paired per-round ratios
  (geometric mean, t interval on log ratios; pipelines/ratios.py). It can differ slightly from
  1 - the ratio of the two $/1M figures, which use mean tokens/s over rounds.
  Beside the measured figure: decode tokens/s at the cost level's batch B (B / mean ITL) and the
  roofline's bound on it (B / decode step below).
Projected (roofline, other hardware; always basis="projected", never mixed with measured), at
  B = the largest bench batch size whose weights + KV cache fit in the hardware's memory:
    decode step = max((weight_bytes + B * kv_bytes_per_token * context) / bandwidth, 2 * params * B / peak_flops)
    prefill     = 2 * params * B * input_tokens / peak_flops
    W = prefill + output_tokens * decode step;  tokens/s = B * output_tokens / W; replicas as above
  with context = input_tokens + output_tokens / 2 (the mean context over decoding). A roofline is
  an upper bound on speed: projected costs are lower bounds.
Run by `python -m pipelines.run`; checked by `pytest tests/test_bench.py -k cost`.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from pipelines.config import BenchConfig, HardwareConfig, PriceConfig, RunConfig, group_choices, load_group_config
from pipelines.errors import ConfigError
from pipelines.ratios import saving_interval, tokens_per_s_ratio
from pipelines.records import BenchResult, CostEstimate, CostResult, RatioInterval
from pipelines.registry import did_you_mean
from pipelines.shape import ModelShape

log = logging.getLogger(__name__)

HOURS_PER_MONTH = 730


def estimate_cost(bench: BenchResult, hardware: HardwareConfig, bench_cfg: BenchConfig,
                  shape: ModelShape, base_bench: BenchResult | None = None, confidence: float = 0.95) -> CostResult:
    """The variant's cost; with the base's record of the same paired run, also its saving vs the base."""
    projected = [estimate for name in hardware.project_to
                 if (estimate := projected_estimate(shape, load_hardware(name), bench_cfg)) is not None]
    decode, bound = decode_beside_roofline(bench, hardware, bench_cfg, shape)
    return CostResult(variant=bench.variant, target_qps=bench_cfg.target_qps, headroom=bench_cfg.headroom,
                      measured=measured_estimate(bench, hardware, bench_cfg), projected=projected,
                      decode_roofline_fraction=decode_roofline_fraction(bench, hardware, bench_cfg, shape),
                      decode_tokens_per_s=decode, decode_roofline_tokens_per_s=bound,
                      saving_vs_base=paired_cost_saving(bench, base_bench, confidence))


def measured_estimate(bench: BenchResult, hardware: HardwareConfig, bench_cfg: BenchConfig) -> CostEstimate | None:
    level = bench.cost_level()
    if level is None:
        return None
    if bench.knee_batch_size is None:
        log.warning("%s: no load level met the SLO; cost is at the best measured load (batch %d), flagged "
                    "'SLO not met'", bench.variant, level.batch_size)
    estimate = _estimate(hardware, "measured", level.batch_size, level.output_tokens_per_s,
                         level.e2e_mean_ms / 1e3, bench_cfg)
    estimate.slo_met = bench.knee_batch_size is not None
    return estimate


def paired_cost_saving(bench: BenchResult | None, base_bench: BenchResult | None,
                       confidence: float) -> RatioInterval | None:
    """1 - variant $/1M / base $/1M at each one's cost level, with its interval; None unless paired
    (0 exactly for the base's benchmark against itself).

    At one price per hour the saving is 1 - base tokens/s / variant tokens/s, so it is the image of the
    interval of the variant/base ratio of per-round tokens/s (pipelines/ratios.py)."""
    if bench is None or base_bench is None:
        return None
    level, base_level = bench.cost_level(), base_bench.cost_level()
    if level is None or base_level is None:
        return None
    ratio = tokens_per_s_ratio(bench, base_bench, level, base_level, confidence)
    return saving_interval(ratio) if ratio else None


def projected_estimate(shape: ModelShape, hardware: HardwareConfig, bench_cfg: BenchConfig) -> CostEstimate | None:
    context = bench_cfg.input_tokens + bench_cfg.output_tokens / 2
    batch = _largest_fitting_batch(shape, hardware, bench_cfg)
    if batch is None:
        log.warning("projection to %s skipped: %.1f GB of weights do not fit in %s GB", hardware.name,
                    shape.weight_bytes / 1e9, hardware.memory_gb)
        return None
    latency = (prefill_bound_s(shape, hardware, batch, bench_cfg.input_tokens)
               + bench_cfg.output_tokens * decode_step_bound_s(shape, hardware, batch, context))
    return _estimate(hardware, "projected", batch, batch * bench_cfg.output_tokens / latency, latency, bench_cfg)


def decode_step_bound_s(shape: ModelShape, hardware: HardwareConfig, batch: int, context: float) -> float:
    """Lower bound on one decoding step: read all weights plus every sequence's KV cache, or do the math."""
    bytes_read = shape.weight_bytes + batch * shape.kv_bytes_per_token * context
    memory_s = bytes_read / (hardware.memory_bandwidth_gb_s * 1e9)
    return max(memory_s, 2 * shape.params * batch / peak_flops(hardware, shape))


def prefill_bound_s(shape: ModelShape, hardware: HardwareConfig, batch: int, prompt_tokens: int) -> float:
    return 2 * shape.params * batch * prompt_tokens / peak_flops(hardware, shape)


def peak_flops(hardware: HardwareConfig, shape: ModelShape) -> float:
    """Peak dense FLOP/s for the matmul dtype; hardware without it runs the checkpoint's float dtype."""
    for dtype in (shape.compute_dtype, shape.dtype):
        if dtype in hardware.peak_dense_tflops:
            return hardware.peak_dense_tflops[dtype] * 1e12
    raise ConfigError(f"hardware.peak_dense_tflops of {hardware.name} has no {shape.dtype} entry; "
                      f"add it to conf/hardware/{hardware.name}.yaml")


def decode_roofline_fraction(bench: BenchResult, hardware: HardwareConfig, bench_cfg: BenchConfig,
                             shape: ModelShape) -> float | None:
    """Measured batch-1 decode tokens/s (1 / mean ITL) over the roofline bound on the same hardware."""
    batch_one = next((level for level in bench.levels if level.batch_size == 1), None)
    if batch_one is None or not batch_one.itl_mean_ms:
        return None
    context = bench_cfg.input_tokens + bench_cfg.output_tokens / 2
    bound_tokens_per_s = 1 / decode_step_bound_s(shape, hardware, 1, context)
    return (1e3 / batch_one.itl_mean_ms) / bound_tokens_per_s


def decode_beside_roofline(bench: BenchResult, hardware: HardwareConfig, bench_cfg: BenchConfig,
                           shape: ModelShape) -> tuple[float | None, float | None]:
    """At the cost level's batch B: measured decode tokens/s (B / mean ITL) and the roofline's bound on it
    (B / decode_step_bound_s: weights plus B sequences' KV cache read once per step); None without an ITL."""
    level = bench.cost_level()
    if level is None or not level.itl_mean_ms:
        return None, None
    context = bench_cfg.input_tokens + bench_cfg.output_tokens / 2
    bound = level.batch_size / decode_step_bound_s(shape, hardware, level.batch_size, context)
    return level.batch_size * 1e3 / level.itl_mean_ms, bound


def usd_per_million_tokens(price_per_hour: float, tokens_per_s: float) -> float:
    return price_per_hour / (tokens_per_s * 3600) * 1e6


def replicas_needed(target_qps: float, latency_s: float, batch_size: int, headroom: float) -> int:
    """Little's law: requests in flight = target_qps * latency; one replica holds batch_size of them."""
    # Rounded first so that float noise (e.g. 2.0000000000000004) does not buy a whole extra replica.
    return max(1, math.ceil(round(target_qps * latency_s * (1 + headroom) / batch_size, 9)))


def check_cost(hardware: HardwareConfig) -> None:
    """Preflight: the hardware's price at its tier, and each hardware.project_to name with its price."""
    price_per_hour(hardware)
    for name in hardware.project_to:
        price_per_hour(load_hardware(name))


def price_per_hour(hardware: HardwareConfig) -> float:
    price = getattr(hardware.price_per_hour, hardware.price_tier)
    if price is None:
        raise ConfigError(f"hardware {hardware.name} has no {hardware.price_tier} price; "
                          f"set hardware.price_per_hour.{hardware.price_tier} or another hardware.price_tier")
    return price


def load_hardware(name: str) -> HardwareConfig:
    """A conf/hardware/<name>.yaml, validated against the HardwareConfig schema."""
    names = group_choices("hardware")
    if name not in names:
        raise ConfigError(did_you_mean("hardware in hardware.project_to", name, names))
    return load_group_config("hardware", name)


def scaled_hardware(cfg: RunConfig, gpus: int) -> HardwareConfig:
    """`gpus` of the configured hardware as one roofline device: ideal tensor parallelism, the price times gpus."""
    hw, n = cfg.hardware, max(gpus, 1)
    price = PriceConfig(**{tier: (value * n if value is not None else None)
                           for tier, value in dataclasses.asdict(hw.price_per_hour).items()})
    return dataclasses.replace(hw, memory_bandwidth_gb_s=hw.memory_bandwidth_gb_s * n, memory_gb=hw.memory_gb * n,
                               peak_dense_tflops={k: v * n for k, v in hw.peak_dense_tflops.items()},
                               price_per_hour=price)


def _largest_fitting_batch(shape: ModelShape, hardware: HardwareConfig, bench_cfg: BenchConfig) -> int | None:
    kv_per_request = shape.kv_bytes_per_token * (bench_cfg.input_tokens + bench_cfg.output_tokens)
    fitting = [b for b in bench_cfg.batch_sizes
               if shape.weight_bytes + b * kv_per_request <= hardware.memory_gb * 1e9]
    return max(fitting) if fitting else None


def _estimate(hardware: HardwareConfig, basis: str, batch: int, tokens_per_s: float, latency_s: float,
              bench_cfg: BenchConfig) -> CostEstimate:
    price = price_per_hour(hardware)
    replicas = replicas_needed(bench_cfg.target_qps, latency_s, batch, bench_cfg.headroom)
    return CostEstimate(hardware=hardware.name, basis=basis, price_per_hour=price, output_tokens_per_s=tokens_per_s,
                        usd_per_million_output_tokens=usd_per_million_tokens(price, tokens_per_s),
                        replicas_for_target=replicas, monthly_usd=replicas * price * HOURS_PER_MONTH,
                        batch_size=batch, e2e_latency_s=latency_s)
