"""The interval behind every gate rule; `benchmarks/coverage.py` measures each one's coverage.

- Paired right/wrong items (accuracy of binary metrics): Tango's asymptotic score interval for
  the difference of paired proportions (Tango 1998, Stat Med 17:891-908). It uses only the
  discordant counts b (base right, variant wrong), c (the reverse) and n, inverts the score test
  with the constrained MLE of the discordant probability, and never collapses to zero width:
  with no discordant pair its bound is z^2 / (n + z^2) (7.1 points at n = 50). Chosen over
  Newcombe's (1998) hybrid score interval because that one PROMOTEd up to 11 % of simulated
  variants whose true drop sat at the tolerance (n = 100, 2 % discordance); Tango stayed within
  2.5 % on the whole grid (BENCHMARKS.md, "Coverage of the gate's intervals").
- Rates (flip rate): Clopper-Pearson, statsmodels `proportion_confint(method="beta")`.
- Means of graded per-item values (graded metrics, choice KL, reference-text KL per block):
  a studentized bootstrap of the mean, resampling clusters (or blocks) when there are any, with
  the cluster-robust standard error inside every resample. Below `MIN_BOOTSTRAP_UNITS` units it
  returns no interval (the gate says INCONCLUSIVE): its coverage was measured too low there.
- Clustered items: the design effect (Rao & Scott 1992) is the cluster-robust variance of the
  per-item mean over its independent-items variance (CR1, G/(G-1)), floored at 1; count-based
  intervals (Tango, Clopper-Pearson) are computed on counts divided by it (effective sample size)
  times (t_{G-1} / z)^2, because G clusters estimate that variance with G - 1 degrees of freedom
  (Cameron & Miller 2015, "A practitioner's guide to cluster-robust inference", VI.A): without
  it 4-10 clusters undercovered in benchmarks/coverage.py.

Exercised by: pytest tests/test_intervals.py; python benchmarks/coverage.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

# Fewer independent units than this and the studentized bootstrap's measured coverage falls short
# of its promise (benchmarks/coverage.py, bootstrap rows: 5.2 % false-PROMOTE at 20 items): the
# gate then says INCONCLUSIVE.
MIN_BOOTSTRAP_UNITS = 50
# Clustered count intervals need this many clusters: with 10-20 the cluster-robust variance is too
# noisy even with the t correction (flip-rate false-PASS 4 % at 10 clusters); below it, INCONCLUSIVE.
MIN_CLUSTERS = 30
TANGO = "Tango score"
CLOPPER_PEARSON = "Clopper-Pearson"
STUDENTIZED = "studentized bootstrap"


@dataclass
class Interval:
    low: float
    high: float
    method: str
    # Clustered width / naive width (1.0 without clusters); units = items, clusters or blocks.
    design_effect: float = 1.0
    units: int = 0
    # Count intervals: the level-free Rao-Scott design effect they were computed with (1.0 without clusters).
    variance_ratio: float = 1.0

    @property
    def decided(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def z_value(confidence: float) -> float:
    return float(norm.ppf(0.5 + confidence / 2))


def _tango_statistic(delta: np.ndarray, b: np.ndarray, c: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Tango's score statistic for H0: p12 - p21 = delta (p12: base right, variant wrong)."""
    w = -b - c + (2 * n - b + c) * delta
    # Constrained MLE of p21: the positive root of 2n q^2 + w q - c delta (1 - delta) = 0.
    q21 = (np.sqrt(np.maximum(w * w + 8 * n * c * delta * (1 - delta), 0.0)) - w) / (4 * n)
    variance = n * (2 * q21 + delta * (1 - delta))
    return (b - c - n * delta) / np.sqrt(np.maximum(variance, 1e-300))


def tango_interval(b, c, n, confidence: float, iterations: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of p12 - p21 = (b - c) / n, vectorized over arrays of counts (floats allowed).

    Each bound is the root of T(delta) = +-z, found by bisection on (-1, 1): T decreases in delta,
    and 60 halvings reach float precision for any n."""
    b, c, n = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (b, c, n)))
    z = z_value(confidence)
    bounds = []
    for target in (z, -z):
        low, high = np.full(b.shape, -1.0), np.full(b.shape, 1.0)
        for _ in range(iterations):
            middle = (low + high) / 2
            above = _tango_statistic(middle, b, c, n) > target
            low, high = np.where(above, middle, low), np.where(above, high, middle)
        bounds.append((low + high) / 2)
    return bounds[0], bounds[1]


def design_effect(values: np.ndarray, clusters: np.ndarray | None) -> float:
    """Cluster-robust over independent-items variance of the mean of `values`, at least 1."""
    if clusters is None:
        return 1.0
    values = np.asarray(values, dtype=float)
    n = values.size
    residuals = values - values.mean()
    naive = float(np.sum(residuals ** 2)) / (n * (n - 1)) if n > 1 else 0.0
    labels, inverse = np.unique(clusters, return_inverse=True)
    groups = labels.size
    if naive <= 0 or groups < 2:
        return 1.0
    totals = np.bincount(inverse, weights=residuals, minlength=groups)
    robust = groups / (groups - 1) * float(np.sum(totals ** 2)) / n ** 2
    return max(1.0, robust / naive)


def few_clusters_factor(groups: int | None, confidence: float) -> float:
    """(t_{G-1} / z)^2 for G clusters, 1 without clusters: the variance itself is estimated."""
    from scipy.stats import t

    if groups is None:
        return 1.0
    return (float(t.ppf(0.5 + confidence / 2, groups - 1)) / z_value(confidence)) ** 2 if groups > 1 else math.inf


def _groups(clusters: np.ndarray | None) -> int | None:
    return None if clusters is None else int(np.unique(clusters).size)


def paired_binary_interval(base_correct: np.ndarray, variant_correct: np.ndarray, confidence: float,
                           clusters: np.ndarray | None = None) -> Interval:
    """Interval of variant accuracy - base accuracy on paired right/wrong items (Tango)."""
    base, variant = np.asarray(base_correct, bool), np.asarray(variant_correct, bool)
    if _too_few_clusters(clusters):
        return _no_interval(TANGO, clusters)
    lost, gained = int(np.sum(base & ~variant)), int(np.sum(~base & variant))
    variance_ratio = design_effect(variant.astype(float) - base.astype(float), clusters)
    return paired_counts_interval(lost, gained, base.size, confidence, variance_ratio, _groups(clusters))


def paired_counts_interval(lost: int, gained: int, n: int, confidence: float, variance_ratio: float = 1.0,
                           groups: int | None = None) -> Interval:
    """Tango's interval of the accuracy difference from what a Fidelity record keeps: the discordant
    counts, n and, for G clustered items, their design effect (`variance_ratio`, level-free). The
    counts are divided by variance_ratio x (t_{G-1} / z)^2, so any level is recomputed exactly."""
    deff = variance_ratio * few_clusters_factor(groups, confidence)
    low, high = tango_interval(lost / deff, gained / deff, n / deff, confidence)
    interval = Interval(low=-float(high), high=-float(low), method=TANGO, units=groups or int(n),
                        variance_ratio=variance_ratio)
    if groups is not None:
        naive_low, naive_high = tango_interval(lost, gained, n, confidence)
        interval.design_effect = (interval.high - interval.low) / float(naive_high - naive_low)
        interval.method = f"{TANGO}, clustered (design effect {deff:.2f})"
    return interval


def rate_interval(count: float, n: float, confidence: float, indicator: np.ndarray | None = None,
                  clusters: np.ndarray | None = None) -> Interval:
    """Clopper-Pearson interval of count / n; with clusters, on counts divided by the design effect."""
    if indicator is not None and _too_few_clusters(clusters):
        return _no_interval(CLOPPER_PEARSON, clusters)
    if indicator is None or clusters is None:
        return rate_counts_interval(count, n, confidence)
    return rate_counts_interval(count, n, confidence, design_effect(indicator, clusters), _groups(clusters))


def rate_counts_interval(count: float, n: float, confidence: float, variance_ratio: float = 1.0,
                         groups: int | None = None) -> Interval:
    """Clopper-Pearson from the count, n and (clustered) the level-free design effect: exact at any level."""
    from statsmodels.stats.proportion import proportion_confint

    deff = variance_ratio * few_clusters_factor(groups, confidence)
    low, high = proportion_confint(count / deff, n / deff, alpha=1 - confidence, method="beta")
    interval = Interval(low=float(low), high=float(high), method=CLOPPER_PEARSON, units=groups or int(n),
                        variance_ratio=variance_ratio)
    if groups is not None:
        naive_low, naive_high = proportion_confint(count, n, alpha=1 - confidence, method="beta")
        interval.design_effect = (interval.high - interval.low) / float(naive_high - naive_low)
        interval.method = f"{CLOPPER_PEARSON}, clustered (design effect {deff:.2f})"
    return interval


def items_to_settle_rate(count: float, n: int, threshold: float, confidence: float) -> int | None:
    """Extra items after which the Clopper-Pearson interval clears `threshold`, if the rate held."""
    from statsmodels.stats.proportion import proportion_confint

    rate = count / n if n > 0 else 0.0

    def settled(total: int) -> bool:
        low, high = proportion_confint(rate * total, total, alpha=1 - confidence, method="beta")
        return high <= threshold if rate < threshold else low > threshold

    return _extra_items(settled, n) if n > 0 and abs(rate - threshold) > 1e-12 else None


def items_to_settle_paired(lost: int, gained: int, n: int, tolerance: float, confidence: float) -> int | None:
    """Extra paired items after which Tango's interval of the drop clears `tolerance`, if the
    shares of items lost and gained held."""
    drop = (lost - gained) / n if n > 0 else 0.0

    def settled(total: int) -> bool:
        low, high = tango_interval(lost * total / n, gained * total / n, total, confidence)
        return float(high) < tolerance if drop < tolerance else float(low) > tolerance

    return _extra_items(settled, n) if n > 0 and abs(drop - tolerance) > 1e-12 else None


def _extra_items(settled, n: int) -> int | None:
    """The smallest total >= n that settles, minus n, by doubling then bisection."""
    total = n
    while not settled(total):
        total *= 2
        if total > 10 ** 9:
            return None
    low_total = max(n, total // 2)
    while low_total < total:
        middle = (low_total + total) // 2
        low_total, total = (low_total, middle) if settled(middle) else (middle + 1, total)
    return max(1, total - n)


def studentized_bootstrap(values: np.ndarray, confidence: float, resamples: int, seed: int,
                          clusters: np.ndarray | None = None) -> Interval:
    """Studentized (bootstrap-t) interval of the mean, resampling clusters when given.

    Each resample's mean is sum(cluster totals) / sum(cluster sizes) and its standard error the
    cluster-robust one; a resample with zero standard error gives t = +-inf (kept: it widens the
    interval, as it should when only a few units carry all the variation)."""
    values = np.asarray(values, dtype=float)
    labels = np.arange(values.size) if clusters is None else np.unique(clusters, return_inverse=True)[1]
    totals = np.bincount(labels, weights=values)
    sizes = np.bincount(labels).astype(float)
    groups = totals.size
    if groups < MIN_BOOTSTRAP_UNITS:
        return Interval(-math.inf, math.inf, f"{STUDENTIZED}: {groups} units, fewer than {MIN_BOOTSTRAP_UNITS}",
                        units=groups)
    mean, se = _mean_and_se(totals[None, :], sizes[None, :])
    rng = np.random.default_rng(seed)
    t_values = []
    for start in range(0, resamples, max(1, (1 << 22) // groups)):  # ~4M indices per batch
        count = min(resamples - start, max(1, (1 << 22) // groups))
        picks = rng.integers(0, groups, size=(count, groups))
        boot_mean, boot_se = _mean_and_se(totals[picks], sizes[picks])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (boot_mean - mean[0]) / boot_se
        t_values.append(np.where(np.isnan(t), 0.0, t))  # 0/0: the resample equals the sample
    t_all = np.concatenate(t_values)
    alpha = 1 - confidence
    upper_t, lower_t = np.quantile(t_all, [1 - alpha / 2, alpha / 2], method="higher")
    low, high = mean[0] - upper_t * se[0], mean[0] - lower_t * se[0]
    if se[0] == 0:
        low = high = mean[0]
    naive = None if clusters is None else studentized_bootstrap(values, confidence, resamples, seed)
    interval = Interval(float(low), float(high), STUDENTIZED if clusters is None else f"{STUDENTIZED} over clusters",
                        units=groups)
    if naive is not None and naive.decided and naive.high > naive.low and interval.decided:
        interval.design_effect = (interval.high - interval.low) / (naive.high - naive.low)
    return interval


def _mean_and_se(totals: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-estimator mean and CR1 cluster-robust standard error, per row."""
    groups = totals.shape[1]
    size = sizes.sum(axis=1)
    mean = totals.sum(axis=1) / size
    residual = totals - mean[:, None] * sizes
    se = np.sqrt(groups / (groups - 1) * np.sum(residual ** 2, axis=1)) / size
    return mean, se


def _too_few_clusters(clusters: np.ndarray | None) -> bool:
    return clusters is not None and np.unique(clusters).size < MIN_CLUSTERS


def _no_interval(method: str, clusters: np.ndarray) -> Interval:
    groups = int(np.unique(clusters).size)
    return Interval(-math.inf, math.inf, f"{method}: {groups} clusters, fewer than {MIN_CLUSTERS}", units=groups)


