"""Variant/base ratios of paired benchmark rounds with their confidence intervals.

A paired benchmark times base and variant in the same rounds (pipelines/bench/paired.py), so round
i gives a pair (x_i base, y_i variant) that shares whatever else the machine was doing then.

The interval the pipeline uses (`paired_ratio_interval`): a t interval on the per-round log ratios
log(y_i / x_i), exponentiated: exp(mean +- t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)), the paired
t interval of log y - log x (the same as scipy's `ttest_rel(log y, log x).confidence_interval`); its
estimate is the geometric mean of the per-round ratios. Background load slows both timings of a
round by a common factor, which cancels in each round's ratio: the interval stays tight while
the absolute figures swing.

Fieller's interval for the ratio of the means (Fieller 1954, "Some problems in interval
estimation", J. R. Stat. Soc. B 16:175-185; `fieller_ratio_interval`) is kept beside it for
comparison (benchmarks/paired_under_load.py prints both) but does not decide: it solves
(ybar - R xbar)^2 <= t^2 (s_yy - 2 R s_xy + R^2 s_xx) / n for R and is unbounded whenever xbar is
not significantly nonzero (xbar^2 <= t^2 s_xx / n), however tightly y follows x. Load that varies
between rounds does exactly that: 3 rounds at 1x, 3x and 1.5x slowdown leave it unbounded even for
exactly proportional timings (tests/test_ratios.py), where the log-ratio interval is [2, 2].

Cost saving at the same hardware price is 1 - cost_variant / cost_base = 1 - x / y (tokens/s), a
monotone function of the ratio R, so its interval is the throughput-ratio interval's image
(`saving_interval`). Exercised by `pytest tests/test_ratios.py` (against scipy's t tests).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import t as student_t

from pipelines.records import BenchResult, LevelRatio, LoadLevel, RatioInterval

FIELLER = "Fieller (paired rounds)"
LOG_RATIO = "t on per-round log ratios"
SELF = "the base's benchmark against itself"


def paired_ratio_interval(numerators, denominators, confidence: float) -> RatioInterval:
    """Geometric mean of numerators_i / denominators_i over paired rounds, with its t interval."""
    y, x = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if y.shape != x.shape or y.size < 2:
        raise ValueError(f"a paired ratio interval needs >= 2 paired rounds, got {y.size} and {x.size}")
    # A zero time or rate, or a round with no measurement (NaN: a served repeat without ITL), has no
    # ratio: say so instead of failing.
    if not (np.isfinite(y).all() and np.isfinite(x).all()) or min(y.min(), x.min()) <= 0:
        return RatioInterval(math.nan, -math.inf, math.inf, confidence, y.size, LOG_RATIO)
    logs = np.log(y / x)
    half = student_t.ppf(0.5 + confidence / 2, y.size - 1) * logs.std(ddof=1) / math.sqrt(y.size)
    mean = logs.mean()
    return RatioInterval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), confidence, y.size, LOG_RATIO)


def fieller_ratio_interval(numerators, denominators, confidence: float) -> RatioInterval:
    """mean(numerators) / mean(denominators) of paired rounds, with Fieller's interval at `confidence`."""
    y, x = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if y.shape != x.shape or y.size < 2:
        raise ValueError(f"Fieller's interval needs >= 2 paired rounds, got {y.size} and {x.size}")
    n = y.size
    estimate = y.mean() / x.mean() if x.mean() else math.nan
    covariance = np.cov(x, y, ddof=1) / n  # of the two means
    t2 = student_t.ppf(0.5 + confidence / 2, n - 1) ** 2
    a = x.mean() ** 2 - t2 * covariance[0, 0]
    if a <= 0:  # the base's mean is not significantly nonzero: the confidence set is unbounded
        return RatioInterval(float(estimate), -math.inf, math.inf, confidence, n, FIELLER)
    b = x.mean() * y.mean() - t2 * covariance[0, 1]
    c = y.mean() ** 2 - t2 * covariance[1, 1]
    root = math.sqrt(max(b * b - a * c, 0.0))  # >= 0 when a > 0; max() absorbs rounding
    return RatioInterval(float(estimate), (b - root) / a, (b + root) / a, confidence, n, FIELLER)


def saving_interval(throughput_ratio: RatioInterval) -> RatioInterval:
    """1 - 1/R: the cost saving at the same price per hour, from the variant/base tokens/s ratio."""
    def saving(ratio: float) -> float:
        return 1 - 1 / ratio if ratio > 0 else -math.inf

    r = throughput_ratio
    if not r.bounded:
        return RatioInterval(saving(r.estimate), -math.inf, math.inf, r.confidence, r.rounds, r.method)
    return RatioInterval(saving(r.estimate), saving(r.low), saving(r.high), r.confidence, r.rounds, r.method)


def coefficient_of_variation(values) -> float | None:
    """Sample std (ddof=1) over mean of repeated measurements; None with fewer than two."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / values.mean()) if values.size >= 2 and values.mean() else None


def paired(bench: BenchResult | None, base_bench: BenchResult | None) -> bool:
    """True when both records come from one paired bench run of two different checkpoints."""
    return (bench is not None and base_bench is not None and bench is not base_bench
            and bench.pairing_id is not None and bench.pairing_id == base_bench.pairing_id)


def tokens_per_s_ratio(bench: BenchResult, base_bench: BenchResult, level: LoadLevel, base_level: LoadLevel,
                       confidence: float) -> RatioInterval | None:
    """Variant/base output tokens/s of two levels of these records, from their paired rounds; exactly 1
    for the base's benchmark against itself; None unless paired with >= 2 rounds each."""
    if bench == base_bench:
        return RatioInterval(1.0, 1.0, 1.0, confidence, level.repeats, SELF)
    if not paired(bench, base_bench) or min(len(level.repeat_output_tokens_per_s),
                                            len(base_level.repeat_output_tokens_per_s)) < 2:
        return None
    return paired_ratio_interval(level.repeat_output_tokens_per_s, base_level.repeat_output_tokens_per_s, confidence)


def level_ratios(bench: BenchResult, base_bench: BenchResult, confidence: float) -> list[LevelRatio]:
    """Variant/base ratios at every load level both measured with >= 2 rounds; [] unless paired."""
    if not paired(bench, base_bench):
        return []
    base_levels = {(level.batch_size, level.load): level for level in base_bench.levels}
    ratios = []
    for level in bench.levels:
        base = base_levels.get((level.batch_size, level.load))
        if base is None or min(len(level.repeat_output_tokens_per_s), len(base.repeat_output_tokens_per_s)) < 2:
            continue
        ratios.append(LevelRatio(
            batch_size=level.batch_size, load=level.load,
            output_tokens_per_s=paired_ratio_interval(level.repeat_output_tokens_per_s,
                                                      base.repeat_output_tokens_per_s, confidence),
            ttft=paired_ratio_interval(level.repeat_ttft_mean_ms, base.repeat_ttft_mean_ms, confidence),
            itl=paired_ratio_interval(level.repeat_itl_mean_ms, base.repeat_itl_mean_ms, confidence)))
    return ratios
