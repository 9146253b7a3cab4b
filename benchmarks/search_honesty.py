"""Does the recipe search keep the gate's error guarantee? A simulation of the whole search procedure.

    python benchmarks/search_honesty.py         # 4,000 replicates per row: 1.5-3 min on 2 cores
    python benchmarks/search_honesty.py --reps 200 --seed 7 --out /tmp/honesty.json

Synthetic paired items, no model: each replicate draws a search split and a disjoint confirmation
split of n items; on each, the base answers an item right with probability BASE_ACCURACY, and each
of K candidates (looked at in their order, cheapest first) flips items independently given the
base, with a true accuracy drop `drop` and a true share of changed answers `discordance`.
The procedure (issue 26, item 3):
  1. search: candidates in order, each evaluated sequentially on the search split exactly as
     eval.sequential=true does (pipelines/evaluate/sequential.py TaskMonitor's accuracy rule: the
     per-item drop mapped to [0, 1], a betting confidence sequence at alpha_looks looked at every
     CHUNK items against (tolerance + 1) / 2, a task out of items decided by the gate on Tango's
     interval at final_confidence), until one PROMOTEs there;
  2. confirm: the chosen candidate is gated once on the confirmation split, on Tango's interval at
     gate.confidence (pipelines/fidelity.py's interval, pipelines/gate.py's decide).
Compared with (b) "reuse": the chosen candidate's search verdict is the answer (no confirmation),
and (c) "naive": each candidate gated fixed-n on the same items in order, the first that PROMOTEs
there is the answer. A false PROMOTE is a PROMOTE of a candidate whose true drop >= tolerance; reported
with its Clopper-Pearson interval (statsmodels). Scenarios: every candidate at the tolerance;
every candidate 1 point above it; K - 1 at the tolerance and the last (the most expensive: the
most layers kept in higher precision) truly fine, which shows the power.
Only the accuracy rule gates (flip-rate and KL rules off), items are unclustered and candidates
flip independently given the base: the most chances for a search to find a lucky candidate.
The gate's decisions depend on the counts only and are cached per (lost, gained, n, level); the
INCONCLUSIVE hint (items that would settle it) is not computed (it does not change a decision).
The search loop is the search command's own (pipelines/search/procedure.py `run_search`), fed the
simulated decisions.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Callable
from unittest import mock

import numpy as np
from statsmodels.stats.proportion import proportion_confint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.config import GateConfig, SuiteTolerance  # noqa: E402
from pipelines.confidence_sequence import BettingConfidenceSequence, paired_to_unit  # noqa: E402
from pipelines.evaluate.sequential import EXHAUSTED, final_confidence, looks_alpha  # noqa: E402
from pipelines.gate import PROMOTE, REJECT, decide  # noqa: E402
from pipelines.intervals import paired_counts_interval  # noqa: E402
from pipelines.records import Fidelity, TaskFidelity  # noqa: E402
from pipelines.search.procedure import Budget, Trial, run_search  # noqa: E402

CONFIDENCE, TOLERANCE, CHUNK = 0.95, 0.02, 50      # conf/gate/default.yaml; eval.chunk_size's default
POLICY = GateConfig(name="simulated", confidence=CONFIDENCE, tolerance=SuiteTolerance(TOLERANCE),
                    max_flip_rate=None, max_kl=None, blocking=["accuracy"])
BASE_ACCURACY = 0.8
# The sequence's grid of candidate means: the threshold is a grid point, so whether the sequence
# lies below it does not depend on the step (benchmarks/coverage_sequential.py uses 0.02 too;
# tests/test_search_honesty.py checks the stops against TaskMonitor's own 2.5e-4 grid).
GRID_STEP = 0.02
KS, SPLIT_ITEMS = (1, 3, 8), (300, 600)
RESULTS = Path(__file__).resolve().parent / "results" / "search_honesty.json"


@dataclass(frozen=True)
class Candidate:
    drop: float          # true base - variant accuracy
    discordance: float   # true share of items whose answer changes

    @property
    def bad(self) -> bool:
        return self.drop >= TOLERANCE - 1e-12


AT_TOLERANCE, ABOVE_TOLERANCE = Candidate(TOLERANCE, 0.10), Candidate(TOLERANCE + 0.01, 0.10)
FINE = Candidate(0.0, 0.02)
SCENARIOS: dict[str, Callable[[int], list[Candidate]]] = {
    "all at tolerance": lambda k: [AT_TOLERANCE] * k,
    "all 1 point above": lambda k: [ABOVE_TOLERANCE] * k,
    "last one fine": lambda k: [AT_TOLERANCE] * (k - 1) + [FINE],
}


def search_then_confirm(candidates: int, search: Callable[[int], str],
                        confirm: Callable[[int], str]) -> tuple[int | None, str]:
    """The search's own procedure (pipelines/search/procedure.py run_search) over candidates 0 .. K-1,
    cheapest first, with a budget of K candidates: `search` and `confirm` give a candidate's gate
    decision on each split. Returns (the index certified on the confirmation split, or None when no
    candidate PROMOTEd on the search split, and the decision: the confirmation's, else never PROMOTE)."""
    slots = [SimpleNamespace(name=str(index)) for index in range(candidates)]
    result = run_search(slots, lambda slot: _trial(slot, "search", search(int(slot.name))),
                        lambda slot: _trial(slot, "confirmation", confirm(int(slot.name))), Budget(candidates))
    return (None if result.chosen is None else int(result.chosen)), result.decision


def _trial(slot: SimpleNamespace, split: str, decision: str) -> Trial:
    return Trial(candidate=slot.name, split=split, decision=decision, reasons=[], items=0, exit_code=0)


def draw_split(rng: np.random.Generator, candidates: list[Candidate], reps: int, n: int):
    """Base right/wrong (reps, n) and each candidate's right/wrong (reps, K, n) on one split."""
    base = rng.random((reps, n)) < BASE_ACCURACY
    variants = np.empty((reps, len(candidates), n), bool)
    for k, c in enumerate(candidates):
        lose = (c.discordance + c.drop) / 2 / BASE_ACCURACY          # P(wrong | base right)
        gain = (c.discordance - c.drop) / 2 / (1 - BASE_ACCURACY)    # P(right | base wrong)
        u = rng.random((reps, n))
        variants[:, k] = np.where(base, u >= lose, u < gain)
    return base, variants


@functools.cache
def gate_decision(lost: int, gained: int, n: int, interval_confidence: float, exhausted: bool) -> str:
    """pipelines/gate.decide on one task's record whose accuracy interval is Tango's at
    interval_confidence (as pipelines/fidelity.py computes it for unclustered right/wrong items)."""
    interval = paired_counts_interval(lost, gained, n, interval_confidence)
    task = TaskFidelity(task="simulated", metric="acc", n=n, base_score=math.nan, variant_score=math.nan,
                        delta=(gained - lost) / n, ci_low=interval.low, ci_high=interval.high,
                        confidence=CONFIDENCE, mcnemar_p=None, right_to_wrong=lost, wrong_to_right=gained,
                        flip_rate=(lost + gained) / n, ci_method=interval.method,
                        stop_reason=EXHAUSTED if exhausted else None)
    fidelity = Fidelity(variant="candidate", reference="base", variant_hash="", reference_hash="",
                        settings_hash="", tasks=[task], divergence=None)
    # An INCONCLUSIVE rule's hint (how many more items would settle it) takes ~90 % of decide's time
    # here and never changes the decision: left out.
    with mock.patch("pipelines.gate.items_to_settle_paired", return_value=None):
        return decide(POLICY, fidelity).decision


def fixed_n_decisions(base: np.ndarray, variants: np.ndarray, interval_confidence: float,
                      exhausted: bool = False) -> np.ndarray:
    """The gate's decision (PROMOTE / REJECT / INCONCLUSIVE) per (replicate, candidate) on all n items."""
    lost = np.sum(base[:, None] & ~variants, axis=2)
    gained = np.sum(~base[:, None] & variants, axis=2)
    pairs, inverse = np.unique(np.stack([lost.ravel(), gained.ravel()], axis=1), axis=0, return_inverse=True)
    decided = [gate_decision(int(a), int(b), base.shape[1], interval_confidence, exhausted) for a, b in pairs]
    return np.asarray(decided)[inverse.ravel()].reshape(lost.shape)


def sequential_decisions(base: np.ndarray, variants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (replicate, candidate): the accuracy rule's verdict of a sequential evaluation on the
    search split (PROMOTE / REJECT / INCONCLUSIVE: the accuracy rule alone gates) and the items it used."""
    reps, k, n = variants.shape
    values = paired_to_unit(np.repeat(base, k, axis=0), variants.reshape(reps * k, n))
    threshold = (TOLERANCE + 1) / 2
    sequence = BettingConfidenceSequence(looks_alpha(CONFIDENCE), [threshold], streams=reps * k,
                                         grid_step=GRID_STEP)
    status, used = np.zeros(reps * k, int), np.full(reps * k, n)
    for start in range(0, n, CHUNK):
        sequence.update(values[:, start:start + CHUNK])
        now = sequence.excludes(threshold)
        stopped = (status == 0) & (now != 0)
        status[stopped], used[stopped] = now[stopped], sequence.n
    final = fixed_n_decisions(base, variants, final_confidence(CONFIDENCE), exhausted=True).ravel()
    decisions = np.where(status == -1, PROMOTE, np.where(status == 1, REJECT, final))
    return decisions.reshape(reps, k), used.reshape(reps, k)


def simulate(candidates: list[Candidate], n: int, reps: int, seed: int | tuple[int, ...]) -> dict:
    """Counts of false PROMOTEs (and PROMOTEs of a fine candidate) of the three procedures; `seed`
    seeds numpy's generator (an int or a tuple: each row of the table draws its own stream)."""
    rng = np.random.default_rng(seed)
    search_base, search_variants = draw_split(rng, candidates, reps, n)
    confirm_base, confirm_variants = draw_split(rng, candidates, reps, n)
    searched, used = sequential_decisions(search_base, search_variants)
    confirmed = fixed_n_decisions(confirm_base, confirm_variants, CONFIDENCE)
    naive = fixed_n_decisions(search_base, search_variants, CONFIDENCE)
    bad = np.array([c.bad for c in candidates])
    counts = {f"{procedure}_{kind}": 0 for procedure in ("confirm", "reuse", "naive") for kind in ("false", "fine")}
    items = 0
    for r in range(reps):
        chosen, decision = search_then_confirm(len(candidates), searched[r].__getitem__, confirmed[r].__getitem__)
        naive_chosen, _ = search_then_confirm(len(candidates), naive[r].__getitem__, naive[r].__getitem__)
        items += int(used[r, :len(candidates) if chosen is None else chosen + 1].sum())
        for procedure, pick, promoted in (("confirm", chosen, decision == PROMOTE), ("reuse", chosen, True),
                                          ("naive", naive_chosen, True)):
            if pick is not None and promoted:
                counts[f"{procedure}_{'false' if bad[pick] else 'fine'}"] += 1
    return {**counts, "reps": reps, "search_items_mean": items / reps}


def rate(count: int, reps: int) -> dict:
    low, high = proportion_confint(count, reps, alpha=1 - CONFIDENCE, method="beta")
    return {"count": count, "rate": count / reps, "low": float(low), "high": float(high)}


def run(reps: int, seed: int) -> list[dict]:
    rows = []
    for index, (scenario, family) in enumerate(SCENARIOS.items()):
        for k in KS:
            for n in SPLIT_ITEMS:
                counts = simulate(family(k), n, reps, (seed, index, k, n))
                rows.append({"scenario": scenario, "candidates": k, "items_per_split": n,
                             "search_items_mean": counts["search_items_mean"],
                             **{f"{p}_{kind}": rate(counts[f"{p}_{kind}"], reps)
                                for p in ("confirm", "reuse", "naive") for kind in ("false", "fine")}})
    return rows


def cell(result: dict) -> str:
    return f"{result['rate']:.3f} [{result['low']:.3f}, {result['high']:.3f}]"


def table(rows: list[dict]) -> str:
    lines = ["| scenario | K | items per split | false PROMOTE: confirmation split | reusing the search items | "
             "naive fixed-n, first to pass | fine one PROMOTEd: confirmation split | reusing the search items | "
             "search items used (mean) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fine = [cell(r[f"{p}_fine"]) if r["scenario"] == "last one fine" else "–" for p in ("confirm", "reuse")]
        lines.append(f"| {r['scenario']} | {r['candidates']} | {r['items_per_split']} | {cell(r['confirm_false'])} | "
                     f"{cell(r['reuse_false'])} | {cell(r['naive_false'])} | {fine[0]} | {fine[1]} | "
                     f"{r['search_items_mean']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4000, help="replicates per row")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.reps, args.seed)
    seconds = time.perf_counter() - start
    print(table(rows))
    print(f"\n{args.reps} replicates per row, seed {args.seed}, {seconds:.0f} s; false PROMOTE rates with "
          f"{CONFIDENCE:.0%} Clopper-Pearson intervals; the gate's promise is <= {(1 - CONFIDENCE) / 2:.3f}")
    settings = {"confidence": CONFIDENCE, "tolerance": TOLERANCE, "chunk": CHUNK, "grid_step": GRID_STEP,
                "base_accuracy": BASE_ACCURACY, "scenarios": {name: [vars(c) for c in family(max(KS))]
                                                             for name, family in SCENARIOS.items()},
                "reps": args.reps, "seed": args.seed}
    machine = {"platform": platform.platform(), "python": platform.python_version(), "seconds": round(seconds, 1),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "machine": machine, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
