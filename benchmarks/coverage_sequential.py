"""Coverage under optional stopping: the sequential gate's rules, stopped after every chunk.

    python benchmarks/coverage.py --sequential --out benchmarks/results/coverage_sequential.md

Each replicate is one sequential evaluation (pipelines/evaluate/sequential.py): items arrive in
chunks, the betting confidence sequence (pipelines/confidence_sequence.py, at alpha_looks =
alpha/2) is updated after every chunk, and the replicate stops at its first decision (PASS or
FAIL); one still undecided at the end of its suite is decided by the gate's fixed-n method on all
its items at 1 - alpha_final (alpha_final = alpha/2): Tango for accuracy, Clopper-Pearson for the
flip rate, the studentized bootstrap (FINAL_RESAMPLES resamples, fewer than the gate's 10,000 to
keep the run to minutes) for mean KL.
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
from pipelines.evaluate.sequential import final_confidence, looks_alpha
from pipelines.intervals import studentized_bootstrap, tango_interval

CONFIDENCE, TOLERANCE, KL_CLIP = 0.95, 0.02, 1.0
ALPHA = 1 - CONFIDENCE
SUITES = (100, 300, 1000)
CHUNKS = (10, 50)
DISCORDANCE = (0.02, 0.05, 0.10, 0.20)
FLIP_RATES = (0.02, 0.05, 0.10, 0.20)
FINAL_RESAMPLES = 199
FINAL = final_confidence(CONFIDENCE)


def run_sequential(draw, threshold: float, suite: int, chunk: int, reps: int, final_look) -> dict:
    """Stop each replicate at its first decision, else decide it by `final_look` (values of the
    undecided replicates -> (low, high) arrays at FINAL); returns PASS / FAIL rates and items used."""
    cs = BettingConfidenceSequence(looks_alpha(CONFIDENCE), thresholds=[threshold], streams=reps, grid_step=0.02)
    decision = np.zeros(reps, int)
    used = np.full(reps, suite)
    values = []
    for start in range(0, suite, chunk):
        values.append(draw(min(chunk, suite - start)))
        cs.update(values[-1])
        now = cs.excludes(threshold)
        new = (decision == 0) & (now != 0)
        decision[new], used[new] = now[new], cs.n
    open_ = decision == 0
    interim = float(np.mean(~open_))
    if open_.any():
        low, high = final_look(np.concatenate(values, axis=1)[open_])
        decision[np.flatnonzero(open_)] = np.where(high < threshold, -1, np.where(low > threshold, 1, 0))
    return {"pass": float(np.mean(decision == -1)), "fail": float(np.mean(decision == 1)),
            "interim": interim, "decided": float(np.mean(decision != 0)), "items": float(used.mean())}


def final_tango(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tango's interval of the drop, mapped to the (drop + 1) / 2 scale the threshold is on."""
    low, high = tango_interval(np.sum(values == 1, axis=1), np.sum(values == 0, axis=1), values.shape[1], FINAL)
    return (np.asarray(low) + 1) / 2, (np.asarray(high) + 1) / 2


def final_clopper_pearson(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from statsmodels.stats.proportion import proportion_confint

    return proportion_confint(values.sum(axis=1), values.shape[1], alpha=1 - FINAL, method="beta")


def final_bootstrap(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    intervals = [studentized_bootstrap(row, FINAL, FINAL_RESAMPLES, seed) for seed, row in enumerate(values)]
    return np.array([i.low for i in intervals]), np.array([i.high for i in intervals])


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

        result = run_sequential(draw, (TOLERANCE + 1) / 2, suite, chunk, reps, final_tango)
        rows.append({"rule": "accuracy", "suite": suite, "chunk": chunk, "setting": f"{discordance:.0%} flips",
                     "truth": f"drop {drop:.2f}", "pass_wrong": drop >= TOLERANCE, "fail_wrong": drop <= TOLERANCE,
                     **result})
    return rows


def flip_points(rng, reps: int) -> list[dict]:
    rows = []
    for suite, chunk, rate in itertools.product(SUITES, CHUNKS, FLIP_RATES):
        result = run_sequential(lambda k, p=rate: (rng.random((reps, k)) < p).astype(float), rate, suite, chunk,
                                reps, final_clopper_pearson)
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
                                clipped_mean / KL_CLIP, suite, chunk, reps, final_bootstrap)
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
             f"Looks at alpha_looks = {looks_alpha(CONFIDENCE):.3f}, the final fixed-n look at alpha_final = "
             f"{1 - FINAL:.3f}; 'by a look': share decided by the confidence sequence, 'decided': in all.", "",
             "| rule | suite | chunk | setting | truth | PASS | FAIL | by a look | decided | mean items used |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        flag = " ✗" if r in bad_pass or r in bad_fail else ""
        lines.append(f"| {r['rule']} | {r['suite']} | {r['chunk']} | {r['setting']} | {r['truth']} | "
                     f"{r['pass']:.4f} | {r['fail']:.4f}{flag} | {r['interim']:.3f} | {r['decided']:.3f} | {r['items']:.0f} |")
    return "\n".join(lines) + "\n"


def main(reps: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    rows = accuracy_points(rng, reps) + flip_points(rng, reps) + kl_points(rng, reps)
    return report(rows, reps, time.perf_counter() - start)
