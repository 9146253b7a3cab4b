"""Does every gate rule keep its promise? A Monte-Carlo check of the intervals in pipelines/intervals.py.

    python benchmarks/coverage.py                      # the grid below, ~3-6 min on 2 cores
    python benchmarks/coverage.py --reps 20000 --out benchmarks/results/coverage.md
    python benchmarks/coverage.py --sequential         # coverage under optional stopping (coverage_sequential.py)

Paired base/variant items are simulated over a grid fixed before looking at any result (the
issue's): n 20..2,000; base accuracy 0.5..0.98; discordance (share of items that flip) 0..20 %;
true accuracy drop 0, at the tolerance (2 points) and twice it; items independent or in clusters
of 5 whose flip propensity varies strongly (gamma, shape 0.5: some clusters flip much more).
For each rule and grid point it reports, with the Monte-Carlo standard error:
  - accuracy (right/wrong items, Tango): false-PROMOTE at the tolerance (upper bound of the drop
    < tolerance while the true drop = tolerance), coverage of the 95 % interval, and power
    (PROMOTE rate) at a true drop of 0;
  - flip rate (Clopper-Pearson): false-PASS with the ceiling set at the true rate, coverage;
  - mean of graded values (studentized bootstrap): graded accuracy differences (mostly 0, skewed
    when not) and KL-like values (lognormal): false-PASS at the boundary and coverage.
The promise: false-PROMOTE / false-PASS <= alpha/2 and coverage >= 1 - alpha, each up to
3 Monte-Carlo standard errors. Rows that break it are marked and counted.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import gamma

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.intervals import (MIN_BOOTSTRAP_UNITS, MIN_CLUSTERS, few_clusters_factor,  # noqa: E402
                                 studentized_bootstrap, tango_interval)

CONFIDENCE, TOLERANCE = 0.95, 0.02
ALPHA = 1 - CONFIDENCE
SIZES = (20, 50, 100, 300, 1000, 2000)
ACCURACIES = (0.5, 0.7, 0.9, 0.98)
DISCORDANCE = (0.0, 0.02, 0.05, 0.10, 0.20)
DROPS = (0.0, TOLERANCE, 2 * TOLERANCE)
CLUSTER_SIZE, CLUSTER_SHAPE = 5, 0.5


def simulate_counts(rng, n: int, discordance: float, drop: float, clustered: bool, reps: int):
    """Per replicate: losses b, gains c, and (clustered) per-cluster discordant and net-loss totals."""
    loss_share = 0.5 + drop / (2 * discordance)
    if not clustered:
        b_c = rng.multinomial(n, [(discordance + drop) / 2, (discordance - drop) / 2,
                                  1 - discordance], size=reps)
        return b_c[:, 0], b_c[:, 1], None, None
    groups = n // CLUSTER_SIZE
    weights = rng.gamma(CLUSTER_SHAPE, 1 / CLUSTER_SHAPE, size=(reps, groups))
    flipped = rng.binomial(CLUSTER_SIZE, np.minimum(1.0, discordance * weights))
    losses = rng.binomial(flipped, loss_share)
    return losses.sum(1), (flipped - losses).sum(1), flipped, 2 * losses - flipped


def true_discordance(discordance: float, clustered: bool) -> float:
    """E[min(1, psi w)] for w ~ Gamma(k, 1/k): the flip rate clusters actually have after capping."""
    if not clustered or discordance == 0:
        return discordance
    k, cap = CLUSTER_SHAPE, 1 / discordance
    return discordance * gamma.cdf(cap, k + 1, scale=1 / k) + gamma.sf(cap, k, scale=1 / k)


def design_effects(totals, sizes_sq_sum, n: int):
    """Vectorized pipelines.intervals.design_effect x few_clusters_factor from per-cluster totals."""
    if totals is None:
        return 1.0
    groups = totals.shape[1]
    factor = few_clusters_factor(groups, CONFIDENCE)
    mean = totals.sum(1) / n
    naive = (sizes_sq_sum - n * mean ** 2) / (n * (n - 1))
    robust = groups / (groups - 1) * np.sum((totals - CLUSTER_SIZE * mean[:, None]) ** 2, 1) / n ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(naive > 0, np.maximum(1.0, robust / naive), 1.0) * factor


def binary_point(rng, n, accuracy, discordance, drop, clustered, reps):
    if clustered and n // CLUSTER_SIZE < MIN_CLUSTERS:  # INCONCLUSIVE by rule: never PROMOTE or PASS
        return {"promote": 0.0, "coverage": 1.0, "flip_pass": 0.0, "flip_coverage": 1.0}
    b, c, flipped, net = simulate_counts(rng, n, discordance, drop, clustered, reps)
    scale = design_effects(net, b + c, n)
    low, high = tango_interval(b / scale, c / scale, n / scale, CONFIDENCE)
    psi = true_discordance(discordance, clustered)
    true_drop = drop * psi / discordance if discordance else 0.0
    row = {"promote": float(np.mean(high < TOLERANCE)),
           "coverage": float(np.mean((low <= true_drop) & (true_drop <= high)))}
    flip_scale = design_effects(flipped, b + c, n)
    flip_low, flip_high = _rate_bounds((b + c) / flip_scale, n / flip_scale)
    row["flip_pass"] = float(np.mean(flip_high <= psi)) if psi > 0 else math.nan
    row["flip_coverage"] = float(np.mean((flip_low <= psi) & (psi <= flip_high)))
    return row


def _rate_bounds(count, n):
    from statsmodels.stats.proportion import proportion_confint

    return proportion_confint(count, n, alpha=ALPHA, method="beta")


def binary_grid(rng, reps: int) -> list[dict]:
    rows = []
    for n, accuracy, discordance, drop, clustered in itertools.product(SIZES, ACCURACIES, DISCORDANCE, DROPS,
                                                                       (False, True)):
        p_loss, p_gain = (discordance + drop) / 2, (discordance - drop) / 2
        if p_gain < 0 or p_loss > accuracy or p_gain > 1 - accuracy or (discordance == 0 and drop > 0):
            continue  # not a possible table: a drop needs at least as many flips, flips need room
        if discordance == 0:
            rows.append(dict(n=n, accuracy=accuracy, discordance=0.0, drop=0.0, clustered=clustered, promote=float(
                tango_interval(0, 0, n, CONFIDENCE)[1] < TOLERANCE), coverage=1.0, flip_pass=math.nan,
                flip_coverage=1.0))
            continue
        row = binary_point(rng, n, accuracy, discordance, drop, clustered, reps)
        rows.append(dict(n=n, accuracy=accuracy, discordance=discordance, drop=drop, clustered=clustered, **row))
    return rows


# Bootstrap cases: graded accuracy differences whose mean drop is exactly the tolerance (a share
# of items change, by an exponential amount), and KL-like lognormal values (ceiling = true mean).
BOOTSTRAP_CASES = (("graded", "20 % of items change", 0.2), ("graded", "every item changes", 1.0),
                   ("kl", "lognormal sigma 0.5", 0.5), ("kl", "lognormal sigma 1", 1.0))


def graded_grid(rng, reps: int, resamples: int) -> list[dict]:
    """False-PASS at the boundary and coverage of the studentized bootstrap, per (n, case)."""
    rows = []
    for n, (kind, label, parameter) in itertools.product((10, 20, 50, 100, 300), BOOTSTRAP_CASES):
        row = dict(n=n, kind=kind, shape=label, decided=n >= MIN_BOOTSTRAP_UNITS, false_pass=math.nan,
                   coverage=math.nan)
        if row["decided"]:
            row["false_pass"], row["coverage"] = _bootstrap_point(rng, n, kind, parameter, reps, resamples)
        rows.append(row)
    return rows


def _bootstrap_point(rng, n: int, kind: str, parameter: float, reps: int, resamples: int) -> tuple[float, float]:
    truth = -TOLERANCE if kind == "graded" else math.exp(-4.0 + parameter ** 2 / 2)
    wrong = covered = 0
    for rep in range(reps):
        if kind == "graded":
            changed = rng.random(n) < parameter
            values = -np.where(changed, TOLERANCE / parameter * rng.exponential(1.0, n), 0.0)
        else:
            values = rng.lognormal(-4.0, parameter, n)
        interval = studentized_bootstrap(values, CONFIDENCE, resamples, seed=rep)
        # graded: PROMOTE when the drop's upper bound (-low) < tolerance; KL: PASS when high <= ceiling.
        wrong += (-interval.low < TOLERANCE) if kind == "graded" else (interval.high <= truth)
        covered += interval.low <= truth <= interval.high
    return wrong / reps, covered / reps


def mc_margin(rate: float, reps: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / reps)


def report(binary: list[dict], graded: list[dict], reps: int, graded_reps: int, seconds: float) -> str:
    fp_limit = ALPHA / 2 + mc_margin(ALPHA / 2, reps)
    cov_limit = CONFIDENCE - mc_margin(ALPHA, reps)
    at_tol = [r for r in binary if r["drop"] == TOLERANCE]
    bad_fp = [r for r in at_tol if r["promote"] > fp_limit]
    bad_cov = [r for r in binary if r["coverage"] < cov_limit]
    flips = [r for r in binary if not math.isnan(r["flip_pass"])]
    bad_flip = [r for r in flips if r["flip_pass"] > fp_limit or r["flip_coverage"] < cov_limit]
    lines = [f"Monte-Carlo check: {reps} replicates per binary grid point ({len(binary)} points), "
             f"{graded_reps} per bootstrap point; {seconds:.0f} s.",
             f"Limits: false-PROMOTE/PASS <= {fp_limit:.4f} (alpha/2 + 3 MC s.e.), coverage >= {cov_limit:.4f}.",
             f"Clustered points with fewer than {MIN_CLUSTERS} clusters (n = 20, 50, 100 in clusters of "
             f"{CLUSTER_SIZE}) are INCONCLUSIVE by rule: never PROMOTE or PASS.", "",
             "| rule | method | points | worst false-PROMOTE/PASS at the boundary | worst coverage | points outside the promise |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| accuracy (right/wrong) | Tango score (+ design effect when clustered) | {len(binary)} | "
             f"{max(r['promote'] for r in at_tol):.4f} | {min(r['coverage'] for r in binary):.4f} | "
             f"{len(bad_fp)} false-PROMOTE, {len(bad_cov)} coverage |",
             f"| flip rate | Clopper-Pearson (+ design effect when clustered) | {len(flips)} | "
             f"{max(r['flip_pass'] for r in flips):.4f} | {min(r['flip_coverage'] for r in flips):.4f} | {len(bad_flip)} |"]
    for kind in ("graded", "kl"):
        rows = [r for r in graded if r["kind"] == kind and r["decided"]]
        bad = [r for r in rows if r["false_pass"] > ALPHA / 2 + mc_margin(ALPHA / 2, graded_reps)
               or r["coverage"] < CONFIDENCE - mc_margin(ALPHA, graded_reps)]
        lines.append(f"| {'graded accuracy' if kind == 'graded' else 'mean KL'} | studentized bootstrap, n >= "
                     f"{MIN_BOOTSTRAP_UNITS} | {len(rows)} | {max(r['false_pass'] for r in rows):.4f} | "
                     f"{min(r['coverage'] for r in rows):.4f} | {len(bad)} |")
    power = [r for r in binary if r["drop"] == 0 and not r["clustered"] and r["accuracy"] == 0.9]
    lines += ["", "Power: PROMOTE rate at a true drop of 0 (independent items, base accuracy 0.9):", "",
              "| n | " + " | ".join(f"discordance {d:.0%}" for d in DISCORDANCE) + " |",
              "| --- |" + " --- |" * len(DISCORDANCE)]
    for n in SIZES:
        cells = {r["discordance"]: r["promote"] for r in power if r["n"] == n}
        lines.append(f"| {n} | " + " | ".join(f"{cells[d]:.3f}" if d in cells else "-" for d in DISCORDANCE) + " |")
    lines += ["", "Boundary rows (true drop = tolerance), false-PROMOTE rate, worst over base accuracies:", "",
              "| n | clustered | " + " | ".join(f"discordance {d:.0%}" for d in DISCORDANCE[1:]) + " |",
              "| --- | --- |" + " --- |" * (len(DISCORDANCE) - 1)]
    for n, clustered in itertools.product(SIZES, (False, True)):
        cells = [max((r["promote"] for r in at_tol if r["n"] == n and r["clustered"] == clustered
                      and r["discordance"] == d), default=math.nan) for d in DISCORDANCE[1:]]
        lines.append(f"| {n} | {'yes' if clustered else 'no'} | " + " | ".join(
            "-" if math.isnan(c) else f"{c:.4f}{' !' if c > fp_limit else ''}" for c in cells) + " |")
    lines += ["", "Bootstrap rows:", "", "| n | values | false-PASS/PROMOTE at the boundary | coverage |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {r['n']} | {r['kind']}, {r['shape']} | {r['false_pass']:.3f} | {r['coverage']:.3f} |"
              if r["decided"] else f"| {r['n']} | {r['kind']}, {r['shape']} | INCONCLUSIVE (< {MIN_BOOTSTRAP_UNITS} units) | - |"
              for r in graded]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4000, help="replicates per binary grid point")
    parser.add_argument("--graded-reps", type=int, default=400, help="replicates per bootstrap grid point")
    parser.add_argument("--resamples", type=int, default=999, help="bootstrap resamples per replicate")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--sequential", action="store_true",
                        help="instead: the sequential rules stopped after every chunk (benchmarks/coverage_sequential.py)")
    args = parser.parse_args(argv)
    if args.sequential:
        from benchmarks.coverage_sequential import main as sequential_main

        text = sequential_main(min(args.reps, 2000), args.seed)
        print(text)
        if args.out:
            args.out.write_text(text)
        return
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    binary = binary_grid(rng, args.reps)
    graded = graded_grid(rng, args.graded_reps, args.resamples)
    text = report(binary, graded, args.reps, args.graded_reps, time.perf_counter() - start)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
