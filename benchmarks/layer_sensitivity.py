"""Does layer sensitivity predict invoice flips? BENCHMARKS.md, "Layer sensitivity on the embedded model".

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/layer_sensitivity.py [quant=fp8] [other overrides]

Measures the per-layer sensitivity (pipelines/search/sensitivity.py: KL on the reference text, one
decoder layer quantized at a time), then quantizes each layer alone the same way (llm-compressor,
in process) and answers every qg_invoice_total item greedily with the task's own token budget and
answer regex (pipelines/embedded/sensitivity.py `generation_correct`), counting flips against the
base (right->wrong + wrong->right, the gate's flip rate) with a Clopper-Pearson interval. Prints a
Markdown table and the Spearman rank correlation between KL and flip count (scipy), with its
exact permutation p-value (every ordering), over the layers and over every unit (layers and the
module kinds: attention, MLP, lm_head, each quantized alone). All decoder layers quantized
together (the plain scheme, lm_head kept) is the last row, for comparison with the pipeline's own
count.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from scipy.stats import permutation_test, spearmanr

from pipelines.embedded.sensitivity import flips, generation_correct, load_items
from pipelines.intervals import rate_counts_interval
from pipelines.models import load_causal_lm, load_tokenizer, offline_environment, resolve_base
from pipelines.pipeline import compose_config
from pipelines.search.sensitivity import measure_sensitivity, quantized_copy

ALL_DECODER_LAYERS = r"re:(.*\.)?layers\."


def invoice_flips(model, tokenizer, items, base_correct: list[bool]) -> tuple[int, int, float]:
    started = time.perf_counter()
    worse, better = flips(base_correct, generation_correct(model, tokenizer, items))
    return worse, better, time.perf_counter() - started


def row(name: str, kl: str, worse: int, better: int, n: int, confidence: float, seconds: float) -> str:
    interval = rate_counts_interval(worse + better, n, confidence)
    return (f"| {name} | {kl} | {worse} | {better} | {worse + better}/{n} = {(worse + better) / n:.3f} "
            f"[{interval.low:.3f}, {interval.high:.3f}] | {seconds:.0f} |")


def main(overrides: list[str]) -> None:
    cfg = compose_config(["quant=fp8", *overrides])
    offline_environment(cfg.model)
    torch.set_num_threads(2)
    base = resolve_base(cfg.model)
    sensitivity = measure_sensitivity(cfg, base, cfg.quant)
    model = load_causal_lm(base.path, cfg.model.dtype)
    tokenizer = load_tokenizer(base.path)
    items = load_items("qg_invoice_total")
    base_correct = generation_correct(model, tokenizer, items)
    level = f"{cfg.gate.confidence:.0%}"
    print(f"sensitivity: {sensitivity.scheme}, {sensitivity.tokens} reference tokens, {sensitivity.seconds:.0f} s")
    print(f"| {cfg.quant.name} quantized | KL nats/token [{level}] | right->wrong | wrong->right | "
          f"flip rate [{level} Clopper-Pearson] | s |\n|---|---|---|---|---|---|")
    counts = []
    for unit in sensitivity.layers + sensitivity.kinds:
        worse, better, seconds = invoice_flips(quantized_copy(model, cfg.quant, unit.target), tokenizer, items,
                                               base_correct)
        counts.append(worse + better)
        kl = f"{unit.kl_mean:.2e} [{unit.kl_ci_low:.2e}, {unit.kl_ci_high:.2e}]"
        print(row(unit.unit, kl, worse, better, len(items), cfg.gate.confidence, seconds), flush=True)
    worse, better, seconds = invoice_flips(quantized_copy(model, cfg.quant, ALL_DECODER_LAYERS), tokenizer, items,
                                           base_correct)
    print(row("all decoder layers", "", worse, better, len(items), cfg.gate.confidence, seconds))
    kls = np.array([unit.kl_mean for unit in sensitivity.layers + sensitivity.kinds])
    layers = len(sensitivity.layers)
    print(rank_correlation("layers", kls[:layers], counts[:layers]))
    print(rank_correlation("every unit", kls, counts))


def rank_correlation(what: str, kls: np.ndarray, counts: list[int]) -> str:
    rho = spearmanr(kls, counts).statistic
    exact = permutation_test((kls,), lambda x: spearmanr(x, counts).statistic, permutation_type="pairings",
                             alternative="two-sided")
    return f"Spearman rho(KL, flips) over {what} = {rho:.3f}, exact permutation p = {exact.pvalue:.3f} (n = {len(kls)})"


if __name__ == "__main__":
    main(sys.argv[1:])
