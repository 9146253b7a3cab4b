"""Coverage under optional stopping: the sequential gate's rules, stopped after every chunk.

    python benchmarks/coverage.py --sequential --out benchmarks/results/coverage_sequential.md

Each replicate is one sequential evaluation (pipelines/evaluate/sequential.py): items arrive in
chunks, the betting confidence sequence (pipelines/confidence_sequence.py) is updated after every
chunk, and the replicate stops at its first decision (PASS or FAIL), or at the end of its suite.
The grid, fixed before any result was seen: suite sizes 100, 300, 1,000; chunks of 10 and
50 items; for accuracy, discordance 2, 5, 10, 20 % with a true drop of 0, the tolerance (2 points)
and twice it; for the flip rate, true rates 2, 5, 10, 20 % with the ceiling at the true rate; for
mean KL, lognormal (sigma 1) values clipped at 1 nat with the ceiling at their clipped mean.
Reported per point: false-PROMOTE / false-PASS (a PASS while the truth sits at or beyond the
threshold: promise <= alpha/2), false-FAIL at the boundary (<= alpha/2), and the share decided
with the mean items used. The grid of candidate means is 0.02 wide here (the pipeline's is
2.5e-4): the decision at a threshold does not depend on it (the threshold is a grid point).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from pipelines.confidence_sequence import BettingConfidenceSequence

CONFIDENCE, TOLERANCE, KL_CLIP = 0.95, 0.02, 1.0
ALPHA = 1 - CONFIDENCE
SUITES = (100, 300, 1000)
CHUNKS = (10, 50)
DISCORDANCE = (0.02, 0.05, 0.10, 0.20)
FLIP_RATES = (0.02, 0.05, 0.10, 0.20)


def run_sequential(draw, threshold: float, suite: int, chunk: int, reps: int) -> dict:
    """Stop each replicate at its first decision; returns PASS / FAIL rates and items used."""
    cs = BettingConfidenceSequence(ALPHA, thresholds=[threshold], streams=reps, grid_step=0.02)
    decision = np.zeros(reps, int)
    used = np.full(reps, suite)
    for start in range(0, suite, chunk):
        cs.update(draw(min(chunk, suite - start)))
        now = cs.excludes(threshold)
        new = (decision == 0) & (now != 0)
        decision[new], used[new] = now[new], cs.n
    return {"pass": float(np.mean(decision == -1)), "fail": float(np.mean(decision == 1)),
            "decided": float(np.mean(decision != 0)), "items": float(used.mean())}


def accuracy_points(rng, reps: int) -> list[dict]:
    rows = []
    for suite, chunk, discordance, drop in itertools.product(SUITES, CHUNKS, DISCORDANCE,
                                                             (0.0, TOLERANCE, 2 * TOLERANCE)):
        if drop > discordance:
            continue  # more drop than flips: impossible

        def draw(k, d=discordance, x=drop):
            u = rng.random((reps, k))
            loss, gain = u < (d + x) / 2, (u >= (d + x) / 2) & (u < d)
            return (loss.astype(float) - gain + 1) / 2  # (drop + 1) / 2

        result = run_sequential(draw, (TOLERANCE + 1) / 2, suite, chunk, reps)
        rows.append({"rule": "accuracy", "suite": suite, "chunk": chunk, "setting": f"{discordance:.0%} flips",
                     "truth": f"drop {drop:.2f}", "pass_wrong": drop >= TOLERANCE, "fail_wrong": drop <= TOLERANCE,
                     **result})
    return rows


def flip_points(rng, reps: int) -> list[dict]:
    rows = []
    for suite, chunk, rate in itertools.product(SUITES, CHUNKS, FLIP_RATES):
        result = run_sequential(lambda k, p=rate: (rng.random((reps, k)) < p).astype(float), rate, suite, chunk, reps)
        rows.append({"rule": "flip rate", "suite": suite, "chunk": chunk, "setting": f"rate {rate:.0%}",
                     "truth": "at ceiling", "pass_wrong": True, "fail_wrong": True, **result})
    return rows


def kl_points(rng, reps: int) -> list[dict]:
    rows = []
    sigma = 1.0
    for suite, chunk, mean in itertools.product(SUITES, CHUNKS, (0.01, 0.05)):
        mu = math.log(mean) - sigma ** 2 / 2
        clipped_mean = float(np.mean(np.minimum(rng.lognormal(mu, sigma, 2_000_000), KL_CLIP)))
        result = run_sequential(lambda k: np.minimum(rng.lognormal(mu, sigma, (reps, k)), KL_CLIP) / KL_CLIP,
                                clipped_mean / KL_CLIP, suite, chunk, reps)
        rows.append({"rule": "mean KL", "suite": suite, "chunk": chunk, "setting": f"lognormal mean {mean}",
                     "truth": "at ceiling", "pass_wrong": True, "fail_wrong": True, **result})
    return rows


def margin(reps: int) -> float:
    return ALPHA / 2 + 3 * math.sqrt(ALPHA / 2 * (1 - ALPHA / 2) / reps)


def report(rows: list[dict], reps: int, seconds: float) -> str:
    """A PASS is wrong when the truth is at or beyond the threshold, a FAIL when it is at or below."""
    limit = margin(reps)
    bad_pass = [r for r in rows if r["pass_wrong"] and r["pass"] > limit]
    bad_fail = [r for r in rows if r["fail_wrong"] and r["fail"] > limit]
    worst_pass = max(r["pass"] for r in rows if r["pass_wrong"])
    worst_fail = max(r["fail"] for r in rows if r["fail_wrong"])
    lines = [f"Sequential coverage: {len(rows)} points, {reps} replicates each, a look after every chunk, "
             f"{seconds:.0f} s. Promise: wrong PASS and wrong FAIL rates <= {limit:.4f} (alpha/2 + 3 MC s.e.).",
             f"Worst false-PROMOTE/PASS (truth at or beyond the threshold): {worst_pass:.4f}; worst false-FAIL "
             f"(truth at or below it): {worst_fail:.4f}; outside the promise: {len(bad_pass)} PASS, "
             f"{len(bad_fail)} FAIL.", "",
             "| rule | suite | chunk | setting | truth | PASS | FAIL | decided | mean items used |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        flag = " ✗" if r in bad_pass or r in bad_fail else ""
        lines.append(f"| {r['rule']} | {r['suite']} | {r['chunk']} | {r['setting']} | {r['truth']} | "
                     f"{r['pass']:.4f} | {r['fail']:.4f}{flag} | {r['decided']:.3f} | {r['items']:.0f} |")
    return "\n".join(lines) + "\n"


def main(reps: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    rows = accuracy_points(rng, reps) + flip_points(rng, reps) + kl_points(rng, reps)
    return report(rows, reps, time.perf_counter() - start)
