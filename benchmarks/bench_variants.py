"""Speed, memory and cost per variant: the numbers in BENCHMARKS.md, "Speed, memory and cost per variant".

    HF_HUB_OFFLINE=1 python benchmarks/bench_variants.py --quant none fp8 w8a8 gptq awq
    python benchmarks/bench_variants.py --quant none -- model.source=/path/to/model bench.repeats=5

Each variant is quantized (cached), benchmarked with the composed bench/hardware config (default
bench=cpu, hardware=cpu-2core) and costed; a Markdown table goes to stdout, records to the cache.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipelines.bench import run_benchmark
from pipelines.cost import estimate_cost
from pipelines.models import offline_environment, resolve_base
from pipelines.pipeline import compose_config
from pipelines.shape import read_model_shape

HEADER = ("| variant | batch | out tok/s (± std) | req/s | TTFT p50/p95/p99 ms | ITL p50/p95/p99 ms "
          "| E2E p95 ms | goodput req/s | SLO | peak mem MiB |\n|" + "---|" * 10)
COST_HEADER = ("| variant | checkpoint MB | knee | $/1M out tok (measured) | replicas @ target | $/month "
               "| batch-1 decode / roofline | projected $/1M, roofline (hardware @ batch) |\n|" + "---|" * 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", nargs="+", default=["none"], help="conf/quant names to benchmark")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. bench.repeats=5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows, cost_rows = [], []
    for quant in args.quant:
        started = time.perf_counter()
        bench, cost, variant = bench_variant([f"quant={quant}", *args.overrides])
        logging.info("%s: benchmark and cost in %.1f s", quant, time.perf_counter() - started)
        rows += level_rows(bench)
        cost_rows.append(cost_row(bench, cost, variant))
    print("\n".join([HEADER, *rows, "", COST_HEADER, *cost_rows]))


def bench_variant(overrides: list[str]):
    from pipelines.quantize import run_quantize

    cfg = compose_config(overrides)
    offline_environment(cfg.model)
    variant = run_quantize(cfg.quant, resolve_base(cfg.model), Path(cfg.cache_dir), cfg.seed)
    bench = run_benchmark(cfg, variant)
    cost = estimate_cost(bench, cfg.hardware, cfg.bench, read_model_shape(variant.checkpoint_dir))
    return bench, cost, variant


def level_rows(bench) -> list[str]:
    def triple(p):
        return f"{p.p50:.1f} / {p.p95:.1f} / {p.p99:.1f}"

    return [f"| {bench.variant} | {lv.batch_size} | {lv.output_tokens_per_s:.0f} ± {lv.output_tokens_per_s_std:.0f} "
            f"| {lv.requests_per_s:.2f} | {triple(lv.ttft_ms)} | {triple(lv.itl_ms)} | {lv.e2e_ms.p95:.0f} "
            f"| {lv.goodput_rps:.2f} | {'yes' if lv.meets_slo else 'no'} | {lv.peak_memory_bytes / 2**20:.0f} |"
            for lv in bench.levels]


def cost_row(bench, cost, variant) -> str:
    m = cost.measured
    measured = (f"{m.usd_per_million_output_tokens:.4f} | {m.replicas_for_target} | {m.monthly_usd:.0f}"
                if m else "n/a (no knee) | n/a | n/a")
    fraction = f"{cost.decode_roofline_fraction:.3g}" if cost.decode_roofline_fraction is not None else "n/a"
    projected = ", ".join(f"{p.hardware} {p.usd_per_million_output_tokens:.4f} @ {p.batch_size}"
                          for p in cost.projected)
    return (f"| {bench.variant} | {variant.size_bytes / 1e6:.1f} | {bench.knee_batch_size} | {measured} "
            f"| {fraction} | {projected} |")


if __name__ == "__main__":
    main()
