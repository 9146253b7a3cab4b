"""Served (vLLM + GuideLLM) vs in-process (transformers generate) speed at one SLO: BENCHMARKS.md,
"Served vs in-process throughput and knee".

    python benchmarks/bench_served.py --quant none fp8 --vllm-python /work/main/.venv-vllm/bin/python
    python benchmarks/bench_served.py --quant none -- bench.requests_per_level=64

Per variant: quantize (cached), serve it with serve=vllm (one server at a time, stopped after),
benchmark it with bench=served (GuideLLM, concurrent streams = bench.batch_sizes); then benchmark
it in process with the hf engine at the same batch sizes, tokens, requests and SLO. Prints Markdown
tables (levels, and the knee with its measured cost) and where GuideLLM's HTML reports are.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from pipelines.bench import run_benchmark
from pipelines.cost import estimate_cost
from pipelines.models import offline_environment, resolve_base
from pipelines.pipeline import compose_config
from pipelines.shape import read_model_shape

HEADER = ("| variant | engine | load | requests (errors) | out tok/s | req/s | TTFT p50/p95 ms | ITL p50/p95 ms "
          "| TPOT p50/p95 ms | E2E p95 ms | goodput req/s | SLO |\n|" + "---|" * 12)
KNEE_HEADER = ("| variant | engine | knee | out tok/s at knee | $/1M out tok | replicas @ target "
               "| wall s (serve + bench) |\n|" + "---|" * 7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", nargs="+", default=["none", "fp8"], help="conf/quant names to benchmark")
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="the Python of the vLLM environment")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides for both engines, e.g. bench.requests_per_level=64")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows, knees, reports = [], [], []
    for quant in args.quant:
        served_cfg = compose_config([f"quant={quant}", "serve=vllm", f"serve.python={args.vllm_python}",
                                     "bench=served", *args.overrides])
        # The same bench settings (tokens, levels, requests, warm-up, SLO), timed in process instead.
        local_cfg = dataclasses.replace(served_cfg, serve=compose_config([]).serve,
                                        bench=dataclasses.replace(served_cfg.bench, engine="hf", params={}))
        for engine, cfg in (("openai", served_cfg), ("hf", local_cfg)):
            started = time.perf_counter()
            bench, cost = bench_variant(cfg)
            wall = time.perf_counter() - started
            rows += level_rows(bench)
            knees.append(knee_row(bench, cost, wall))
            reports += [path for path in bench.reports if path.endswith(".html")]
    print("\n".join([HEADER, *rows, "", KNEE_HEADER, *knees, "", *[f"GuideLLM report: {p}" for p in reports]]))


def bench_variant(cfg):
    from pipelines.quantize import run_quantize
    from pipelines.serve import make_server

    offline_environment(cfg.model)
    variant = run_quantize(cfg.quant, resolve_base(cfg.model), Path(cfg.cache_dir), cfg.seed)
    if cfg.bench.engine == "openai":
        with make_server(cfg).serve(variant, "variant", variant_dir(cfg)) as served:
            bench = run_benchmark(cfg, variant, served)
    else:
        bench = run_benchmark(cfg, variant)
    return bench, estimate_cost(bench, cfg.hardware, cfg.bench, read_model_shape(variant.checkpoint_dir))


def variant_dir(cfg):
    """A short directory for the server's log and sockets (vLLM's IPC socket paths must fit in 107 bytes)."""
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"qg-{cfg.quant.name}-"))


def level_rows(bench) -> list[str]:
    def pair(p):
        return "n/a" if p is None else f"{p.p50:.1f} / {p.p95:.1f}"

    return [f"| {bench.variant} | {bench.engine} | {lv.load or f'batch {lv.batch_size}'} "
            f"| {lv.requests} ({lv.errored_requests}) | {lv.output_tokens_per_s:.0f} | {lv.requests_per_s:.2f} "
            f"| {pair(lv.ttft_ms)} | {pair(lv.itl_ms)} | {pair(lv.tpot_ms)} | {lv.e2e_ms.p95:.0f} "
            f"| {lv.goodput_rps:.2f} | {'met' if lv.meets_slo else 'missed'} |" for lv in bench.levels]


def knee_row(bench, cost, wall_s: float) -> str:
    knee = bench.knee_load or (f"batch {bench.knee_batch_size}" if bench.knee_batch_size else "none")
    measured = cost.measured
    money = (f"{measured.output_tokens_per_s:.0f} | {measured.usd_per_million_output_tokens:.2f} "
             f"| {measured.replicas_for_target}" if measured else "n/a | n/a | n/a")
    return f"| {bench.variant} | {bench.engine} | {knee} | {money} | {wall_s:.0f} |"


if __name__ == "__main__":
    main()
