"""Paired benchmarking under a CPU hog: the numbers in BENCHMARKS.md, "Paired speed ratios under load".

    HF_HUB_OFFLINE=1 python benchmarks/paired_under_load.py                  # bench=cpu, fp8 vs base
    python benchmarks/paired_under_load.py --quant fp8 w8a8 --hogs-per-core 2 -- bench.repeats=5

Runs the default sweep's bench stage (the composed bench config, default bench=cpu) for base and
each variant twice, as `python -m pipelines.run` does (pipelines/bench/paired.py, re-timed:
overwrite=true): once as the machine is, once with busy-loop processes this script starts (hogs per
core x CPUs), each bounded to --hog-seconds and stopped when the loaded run ends or fails. For each
run it prints the 1-minute load average before/after, every level's tokens/s of both and the
variant/base ratio with its interval (t on per-round log ratios, the pipeline's; Fieller's beside it),
and the saving at the cost level; then what the old unpaired comparison (a cached variant benchmark
next to a base timed in another run) would have reported.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from pipelines.bench.paired import run_paired_benchmark
from pipelines.cost import paired_cost_saving
from pipelines.models import offline_environment, resolve_base
from pipelines.pipeline import BASELINE, compose_config
from pipelines.ratios import fieller_ratio_interval

HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
HEADER = ("| run | load avg 1 min before → after | variant | batch | base tok/s | variant tok/s "
          "| ratio [CI] (log-ratio t) | Fieller [CI] |\n|" + "---|" * 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", nargs="+", default=["fp8"], help="conf/quant names to pair with the base")
    parser.add_argument("--hogs-per-core", type=int, default=1)
    parser.add_argument("--hog-seconds", type=int, default=900, help="upper bound on each hog's life")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. bench.repeats=5")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows, pairs = [], {}
    for run in ("as is", "CPU hog"):
        for quant in args.quant:
            if run == "as is":
                pairs[run, quant] = paired(quant, args.overrides)
            else:
                with cpu_hogs(args.hogs_per_core * (os.cpu_count() or 1), args.hog_seconds):
                    pairs[run, quant] = paired(quant, args.overrides)
            rows += level_rows(run, *pairs[run, quant])
    print("\n".join([HEADER, *rows, "", *saving_lines(pairs, args.quant), "", *unpaired_lines(pairs, args.quant)]))


def paired(quant: str, overrides: list[str]):
    from pipelines.quantize import run_quantize

    cfg = compose_config([f"quant={quant}", "overwrite=true", *overrides])
    offline_environment(cfg.model)
    base_model = resolve_base(cfg.model)
    base = run_quantize(BASELINE, base_model, Path(cfg.cache_dir), cfg.seed)
    variant = run_quantize(cfg.quant, base_model, Path(cfg.cache_dir), cfg.seed)
    base_bench, bench = run_paired_benchmark(cfg, base, variant)
    return base_bench, bench, cfg.gate.confidence


class cpu_hogs:
    """`count` busy-loop processes, each ending by itself after `seconds`, terminated on exit."""

    def __init__(self, count: int, seconds: int):
        self.count, self.seconds, self.processes = count, seconds, []

    def __enter__(self):
        code = HOG.format(seconds=self.seconds)
        self.processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.count)]
        logging.info("started %d CPU hogs (pids %s)", self.count, [p.pid for p in self.processes])
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)
        return False


def level_rows(run: str, base_bench, bench, confidence: float) -> list[str]:
    c = bench.conditions
    load = f"{c.load_avg_before[0]:.1f} → {c.load_avg_after[0]:.1f}"
    base_levels = {lv.batch_size: lv for lv in base_bench.levels}
    rows = []
    for ratio, level in zip(bench.ratios, bench.levels):
        r, base = ratio.output_tokens_per_s, base_levels[level.batch_size]
        f = fieller_ratio_interval(level.repeat_output_tokens_per_s, base.repeat_output_tokens_per_s, confidence)
        fieller = f"{f.estimate:.3f} [{f.low:.3f}, {f.high:.3f}]" if f.bounded else f"{f.estimate:.3f} unbounded"
        rows.append(f"| {run} | {load} | {bench.variant} | {level.batch_size} | {base.output_tokens_per_s:.1f} "
                    f"| {level.output_tokens_per_s:.1f} | {r.estimate:.3f} [{r.low:.3f}, {r.high:.3f}] | {fieller} |")
    return rows


def saving_lines(pairs, quants: list[str]) -> list[str]:
    lines = []
    for (run, quant), (base_bench, bench, confidence) in pairs.items():
        s = paired_cost_saving(bench, base_bench, confidence)
        lines.append(f"- {run}, {quant}: saving in $/1M output tokens vs base at the cost level "
                     f"(batch {bench.cost_level().batch_size} vs {base_bench.cost_level().batch_size}): "
                     f"{s.estimate:+.1%}, {confidence:.0%} [{s.low:+.1%}, {s.high:+.1%}] over {s.rounds} rounds; "
                     f"warnings: {'; '.join(bench.conditions.warnings) or 'none'}")
    return lines


def unpaired_lines(pairs, quants: list[str]) -> list[str]:
    """What the old cache could pair: a variant timed in one run with a base timed in the other."""
    lines = []
    for quant in quants:
        (idle_base, idle_variant, _), (busy_base, busy_variant, _) = pairs["as is", quant], pairs["CPU hog", quant]
        for name, base, variant in (("as-is variant / loaded base", busy_base, idle_variant),
                                    ("loaded variant / as-is base", idle_base, busy_variant)):
            ratios = [v.output_tokens_per_s / b.output_tokens_per_s for v, b in zip(variant.levels, base.levels)]
            lines.append(f"- unpaired {quant}, {name}: " + ", ".join(
                f"batch {lv.batch_size} {r:.2f}" for lv, r in zip(variant.levels, ratios)))
        slowdown = [a.output_tokens_per_s / b.output_tokens_per_s for a, b in zip(idle_base.levels, busy_base.levels)]
        lines.append(f"- base tokens/s as is / under the hog: " + ", ".join(
            f"batch {lv.batch_size} {s:.2f}x" for lv, s in zip(idle_base.levels, slowdown)))
    return lines


if __name__ == "__main__":
    main()
