"""Engine comparison: one algorithm (GPTQ or AWQ W4A16) run by llm-compressor and by GPTQModel, compared
item by item with the same paired fidelity record the gate uses. BENCHMARKS.md, "Engine comparison".

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/engine_comparison.py           # gptq, eval=domain
    python benchmarks/engine_comparison.py --quant awq -- eval=quick model.source=/path/to/model

Needs `pip install -e '.[gptqmodel]'`. Both variants and the base are quantized / evaluated through
the pipeline's own stages (`run_quantize`, `run_evaluate`, cached under cache_dir like any run), then
`fidelity.compare` pairs GPTQModel's variant against llm-compressor's (and each against the base, for
scale). Quantization seconds are those of the build that made each checkpoint (the manifest's), also
when it came from the cache. The Fidelity records are written next to the cache as JSON.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.config import RunConfig
from pipelines.fidelity import compare
from pipelines.records import EvalResult, Fidelity, Variant, save_record

log = logging.getLogger("engine_comparison")
ENGINES = ("llmcompressor", "gptqmodel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="gptq", choices=["gptq", "awq"], help="conf/quant name to run with both")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by both, e.g. eval=quick")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    configs = engine_configs(args.quant, args.overrides)
    variants, evals = quantize_and_evaluate(configs)
    cfg = configs["llmcompressor"]
    pairs = {("base", name): (evals["base"], evals[name]) for name in ENGINES}
    pairs[("llmcompressor", "gptqmodel")] = (evals["llmcompressor"], evals["gptqmodel"])
    records = {pair: compare(ref, var, confidence=cfg.gate.confidence, bootstrap_samples=cfg.eval.bootstrap_samples,
                             seed=cfg.seed, reference_name=pair[0], variant_name=pair[1])
               for pair, (ref, var) in pairs.items()}
    out = Path(cfg.cache_dir) / "engine_comparison" / f"{cfg.model.name}-{args.quant}"
    for (reference, variant), record in records.items():
        save_record(record, out / f"{variant}-vs-{reference}.json")
    print("\n".join(report(args.quant, variants, records) + ["", f"fidelity records: {out}"]))


def engine_configs(quant: str, overrides: list[str]) -> dict[str, RunConfig]:
    from pipelines.pipeline import compose_config

    return {engine: compose_config([f"quant={quant}", f"quant.backend={engine}", f"quant.name={quant}-{engine}",
                                    *overrides]) for engine in ENGINES}


def quantize_and_evaluate(configs: dict[str, RunConfig]) -> tuple[dict[str, Variant], dict[str, EvalResult]]:
    from pipelines.evaluate import run_evaluate
    from pipelines.models import offline_environment, resolve_base
    from pipelines.pipeline import BASELINE
    from pipelines.quantize import run_quantize

    first = configs["llmcompressor"]
    offline_environment(first.model)
    base = resolve_base(first.model)
    variants = {"base": run_quantize(BASELINE, base, Path(first.cache_dir), first.seed)}
    variants.update({engine: run_quantize(cfg.quant, base, Path(cfg.cache_dir), cfg.seed) for engine, cfg in configs.items()})
    # One eval config for all three (only the quant group differs), so every pair is comparable.
    evals = {name: run_evaluate(first, variant) for name, variant in variants.items()}
    return variants, evals


def report(quant: str, variants: dict[str, Variant], records: dict[tuple[str, str], Fidelity]) -> list[str]:
    lines = [f"## {quant}: llm-compressor vs GPTQModel", "",
             "| engine | quantize s | size MB | from cache |", "|---|---|---|---|"]
    lines += [f"| {name} | {variants[name].quantize_seconds:.1f} | {variants[name].size_bytes / 1e6:.2f} | "
              f"{variants[name].from_cache} |" for name in ENGINES]
    lines += ["", "| variant vs reference | task | n | ref acc | var acc | delta [CI] | McNemar p | "
              "right->wrong | wrong->right | flip rate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (reference, variant), record in records.items():
        for task in record.tasks:
            p_value = "-" if task.mcnemar_p is None else f"{task.mcnemar_p:.3f}"
            lines.append(f"| {variant} vs {reference} | {task.task} | {task.n} | {task.base_score:.3f} | "
                         f"{task.variant_score:.3f} | {task.delta:+.3f} [{task.ci_low:+.3f}, {task.ci_high:+.3f}] | "
                         f"{p_value} | {task.right_to_wrong} | {task.wrong_to_right} | {task.flip_rate:.3f} |")
    lines += ["", "| variant vs reference | tokens | KL mean | KL p95 | top-1 agreement | perplexity ratio |",
              "|---|---|---|---|---|---|"]
    for (reference, variant), record in records.items():
        div = record.divergence
        if div is not None:
            lines.append(f"| {variant} vs {reference} | {div.tokens} | {div.kl_mean:.4f} | {div.kl_p95:.4f} | "
                         f"{div.top1_agreement:.4f} | {div.perplexity_ratio:.4f} |")
    return lines


if __name__ == "__main__":
    main()
