"""Does a second vLLM server that sits idle slow the one being timed? (paired served benchmarks keep
the base's server up while the variant's is timed, and the other way round)

One GuideLLM round (every level of `bench=served` with the settings below) against the variant's
server alone, then with the base's server started beside it (variant, then base), then alone again.

    python benchmarks/served_side_by_side.py --variant-dir <cache>/variants/tiny-llama/fp8-<hash> \
        --vllm-python .venv-vllm/bin/python --out /tmp/side-by-side
Numbers in BENCHMARKS.md ("Paired served benchmarks: two vLLM servers at once").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.bench.measure import summarize_served_level
from pipelines.pipeline import compose_config
from pipelines.records import ServedModel, Variant
from pipelines.registry import BENCH_ENGINES, resolve
from pipelines.serve import make_server

EMBEDDED = Path(__file__).resolve().parents[1] / "pipelines" / "embedded" / "tiny-llama"
SETTINGS = ["bench=served", "tracking.enabled=false", "bench.batch_sizes=[1,4]", "bench.requests_per_level=8",
            "bench.warmup_requests=1", "bench.output_tokens=8", "bench.input_tokens=32"]


def variant(name: str, checkpoint: Path) -> Variant:
    return Variant(name=name, base="tiny-llama", backend="x", method="x", scheme=None, checkpoint_dir=str(checkpoint),
                   size_bytes=1, content_hash=name, cache_key="k", quantize_seconds=0.0, from_cache=False)


def one_round(cfg, served: ServedModel, out_dir: Path, label: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = resolve(BENCH_ENGINES, "bench engine", "openai")(served, cfg, **cfg.bench.params)
    levels = [summarize_served_level(level, cfg.bench.slo) for level in engine.run_round(out_dir, 0).levels]
    print(f"{label}: " + ", ".join(f"{lv.load} {lv.output_tokens_per_s:.1f} tok/s" for lv in levels), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant-dir", type=Path, required=True)
    parser.add_argument("--vllm-python", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = compose_config(["serve=vllm", f"serve.python={args.vllm_python}", *SETTINGS])
    server = make_server(cfg)
    with server.serve(variant("variant", args.variant_dir), "variant", args.out) as timed:
        one_round(cfg, timed, args.out / "alone", "variant alone")
        with server.serve(variant("none", EMBEDDED), "base", args.out) as beside:
            one_round(cfg, timed, args.out / "beside", "variant beside the base's server")
            one_round(cfg, beside, args.out / "base", "base beside the variant's server")
        one_round(cfg, timed, args.out / "again", "variant alone again")


if __name__ == "__main__":  # GuideLLM's spawned workers import this module again: run only here
    main()
