"""The gate's intervals (pipelines/intervals.py) against published examples and independent computations.

nice -n 10 python -m pytest tests/test_intervals.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from pipelines.intervals import (MIN_BOOTSTRAP_UNITS, design_effect, items_to_settle_paired, items_to_settle_rate,
                                 paired_binary_interval, paired_counts_interval, rate_counts_interval, rate_interval,
                                 studentized_bootstrap, tango_interval)

Z = stats.norm.ppf(0.975)


def independent_tango(b: int, c: int, n: int, z: float = Z) -> tuple[float, float]:
    """Tango's score interval computed another way: the constrained MLE of p21 by numerical
    maximisation of the trinomial likelihood (no closed-form root), the bounds by brentq."""

    def statistic(delta: float) -> float:
        def negative_loglik(q21: float) -> float:
            q12, rest = q21 + delta, 1 - 2 * q21 - delta
            return -(b * math.log(max(q12, 1e-300)) + c * math.log(max(q21, 1e-300))
                     + (n - b - c) * math.log(max(rest, 1e-300)))

        low, high = max(0.0, -delta), (1 - delta) / 2
        q21 = optimize.minimize_scalar(negative_loglik, bounds=(low, high), method="bounded",
                                       options={"xatol": 1e-13}).x
        return (b - c - n * delta) / math.sqrt(n * (2 * q21 + delta * (1 - delta)))

    edge = 1 - 1e-9
    lower = optimize.brentq(lambda d: statistic(d) - z, -edge, edge, xtol=1e-12) if b - c > -n else -1.0
    upper = optimize.brentq(lambda d: statistic(d) + z, -edge, edge, xtol=1e-12) if b - c < n else 1.0
    return lower, upper


def test_tango_reproduces_the_published_bentur_example():
    # Airway hyper-responsiveness before/after stem-cell transplantation (Bentur et al. 2009):
    # n11=1, n12=1, n21=7, n22=12. Fagerland, Lydersen & Laake, "Recommended tests and confidence
    # intervals for paired binomial proportions", Stat Med 2014;33:2850-2875 (and their book
    # "Statistical Analysis of Contingency Tables", 2017, ch. 8) print the Tango asymptotic score
    # interval for p1 - p2 = -0.2857 as (-0.517, -0.026).
    low, high = tango_interval(1, 7, 21, 0.95)
    assert (float(low), float(high)) == pytest.approx((-0.517, -0.026), abs=6e-4)


def test_tango_reproduces_the_published_cavo_example():
    # Complete response before/after consolidation therapy (Cavo et al. 2012): n11=59, n12=6, n21=16,
    # n22=80. Fagerland, Lydersen & Laake's book (2017, ch. 8) and their R package contingencytables
    # (tests/testthat/test-ch8.R) print the Tango score interval as "-0.0621 (95% CI -0.1240 to -0.0054)".
    low, high = tango_interval(6, 16, 161, 0.95)
    assert (float(low), float(high)) == pytest.approx((-0.1240, -0.0054), abs=5e-5)


@pytest.mark.parametrize("b, c, n", [(1, 7, 21), (6, 16, 161), (0, 0, 20), (1, 0, 20), (0, 1, 20), (3, 1, 50),
                                     (40, 20, 160), (12, 2, 50), (0, 0, 600), (67, 0, 600), (10, 10, 20), (20, 0, 20)])
def test_tango_matches_an_independent_numerical_computation(b, c, n):
    ours = tango_interval(b, c, n, 0.95)
    assert (float(ours[0]), float(ours[1])) == pytest.approx(independent_tango(b, c, n), abs=2e-6)


@pytest.mark.parametrize("n", [20, 50, 100, 600])
def test_no_discordant_pair_still_bounds_the_drop_away_from_zero(n):
    # Hand-derived: with b = c = 0, T(d) = -sqrt(n d / (1 - d)), so the bound is z^2 / (n + z^2).
    low, high = tango_interval(0, 0, n, 0.95)
    assert (float(low), float(high)) == pytest.approx((-Z ** 2 / (n + Z ** 2), Z ** 2 / (n + Z ** 2)), abs=1e-9)
    if n <= 100:  # nothing flipped in <= 100 items does not certify a 2-point tolerance
        assert high > 0.02


def test_one_discordant_pair_and_n_20_give_a_proper_interval():
    for b, c in ((1, 0), (0, 1)):
        low, high = tango_interval(b, c, 20, 0.95)
        assert low < (b - c) / 20 < high and high - low > 0.1
    low_10, high_10 = tango_interval(1, 0, 20, 0.95)
    low_01, high_01 = tango_interval(0, 1, 20, 0.95)
    assert (float(low_10), float(high_10)) == pytest.approx((-float(high_01), -float(low_01)), abs=1e-9)


def test_paired_binary_interval_is_the_negated_tango_interval_of_the_drop():
    base = np.array([1] * 50 + [1] * 3 + [0] * 1 + [0] * 6, dtype=bool)
    variant = np.array([1] * 50 + [0] * 3 + [1] * 1 + [0] * 6, dtype=bool)
    interval = paired_binary_interval(base, variant, 0.95)
    low, high = independent_tango(3, 1, 60)
    assert (interval.low, interval.high) == pytest.approx((-high, -low), abs=2e-6)
    assert interval.design_effect == 1.0 and interval.units == 60


def test_clopper_pearson_matches_scipy_exact_binomial():
    for count, n in ((67, 600), (0, 50), (50, 50), (3, 20)):
        ours = rate_interval(count, n, 0.95)
        exact = stats.binomtest(count, n).proportion_ci(0.95, method="exact")
        assert (ours.low, ours.high) == pytest.approx((exact.low, exact.high), abs=1e-9)
        assert ours.method == "Clopper-Pearson"


def test_design_effect_hand_computed():
    # Values 1,1,0,0 in clusters {a,a},{b,b}: mean 0.5, residuals +-0.5. Naive variance of the
    # mean: sum r^2 / (n (n-1)) = 1 / 12. Cluster totals +1, -1: robust = G/(G-1) * 2 / n^2 = 2 * 2 / 16
    # = 0.25. Design effect 0.25 / (1/12) = 3.
    values = np.array([1.0, 1.0, 0.0, 0.0])
    assert design_effect(values, np.array(["a", "a", "b", "b"])) == pytest.approx(3.0)
    assert design_effect(values, None) == 1.0
    # Alternating clusters cancel within: the robust variance is smaller, floored at 1.
    assert design_effect(values, np.array(["a", "b", "a", "b"])) == 1.0


def test_studentized_bootstrap_matches_a_plain_loop_implementation():
    rng = np.random.default_rng(3)
    values = rng.exponential(0.01, 60)
    ours = studentized_bootstrap(values, 0.9, 2000, seed=5)
    # The same resamples drawn one by one: t* = (mean* - mean) / (sd* / sqrt(n)).
    picks = np.random.default_rng(5).integers(0, 60, size=(2000, 60))
    mean, se = values.mean(), values.std(ddof=1) / math.sqrt(60)
    t = [(values[p].mean() - mean) / (values[p].std(ddof=1) / math.sqrt(60)) for p in picks]
    upper_t, lower_t = np.quantile(t, [0.95, 0.05], method="higher")
    assert (ours.low, ours.high) == pytest.approx((mean - upper_t * se, mean - lower_t * se), rel=1e-9)
    assert ours.low < mean < ours.high


def test_studentized_bootstrap_refuses_too_few_units_and_resamples_clusters():
    few = studentized_bootstrap(np.arange(MIN_BOOTSTRAP_UNITS - 1, dtype=float), 0.95, 100, seed=0)
    assert not few.decided and "fewer than" in few.method
    values = np.repeat(np.random.default_rng(1).exponential(1.0, 60), 4)  # 60 clusters of 4 equal items
    clusters = np.repeat(np.arange(60), 4)
    clustered = studentized_bootstrap(values, 0.95, 2000, seed=0, clusters=clusters)
    assert clustered.units == 60 and clustered.design_effect > 1.5  # ~sqrt(4) = 2 for identical members


def test_count_intervals_need_enough_clusters_and_use_the_t_quantile():
    base = np.ones(100, dtype=bool)
    variant = np.arange(100) % 10 != 0
    few = paired_binary_interval(base, variant, 0.95, clusters=np.arange(100) // 5)  # 20 clusters
    assert not few.decided and "fewer than 30" in few.method
    assert not rate_interval(10, 100, 0.95, (~variant).astype(float), np.arange(100) // 5).decided
    # 50 clusters of 2 whose flips do not cluster (design effect floored at 1): only the
    # (t_49 / z)^2 factor widens the interval, as Tango on counts divided by that factor.
    clusters = np.arange(100) // 2
    interval = paired_binary_interval(base, variant, 0.95, clusters=clusters)
    factor = (stats.t.ppf(0.975, 49) / Z) ** 2
    low, high = tango_interval(10 / factor, 0, 100 / factor, 0.95)
    assert (interval.low, interval.high) == pytest.approx((-float(high), -float(low)), abs=1e-9)


@pytest.mark.parametrize("confidence", [0.80, 0.90, 0.99])
def test_clustered_count_intervals_recompute_exactly_at_any_level_from_what_a_record_keeps(confidence):
    # 40 clusters of 5; the variant loses whole clusters. A record keeps the counts, n, the number of
    # clusters and the level-free design effect of its 95 % interval: enough for any other level.
    base, variant = np.ones(200, dtype=bool), np.arange(200) // 5 % 8 != 0
    clusters = np.arange(200) // 5
    kept = paired_binary_interval(base, variant, 0.95, clusters)
    flips = rate_interval(25, 200, 0.95, (base != variant).astype(float), clusters)
    assert kept.variance_ratio == pytest.approx(design_effect((variant ^ base).astype(float), clusters))
    assert kept.variance_ratio > 1.5
    again = paired_counts_interval(25, 0, 200, confidence, kept.variance_ratio, groups=40)
    fresh = paired_binary_interval(base, variant, confidence, clusters)
    assert (again.low, again.high, again.method) == (fresh.low, fresh.high, fresh.method)
    again_rate = rate_counts_interval(25, 200, confidence, flips.variance_ratio, groups=40)
    fresh_rate = rate_interval(25, 200, confidence, (base != variant).astype(float), clusters)
    assert (again_rate.low, again_rate.high) == (fresh_rate.low, fresh_rate.high)


def test_items_to_settle_a_rate_is_the_smallest_total_that_decides():
    more = items_to_settle_rate(67, 600, 0.10, 0.95)
    total = 600 + more
    rate = 67 / 600

    def lower(total: int) -> float:
        return rate_interval(rate * total, total, 0.95).low

    assert lower(total) > 0.10 >= lower(total - 1)
    assert items_to_settle_rate(60, 600, 0.10, 0.95) is None  # the rate sits at the ceiling


def test_items_to_settle_the_accuracy_rule_is_exact_for_tango():
    # No flip in 50 items: Tango's bound z^2 / (N + z^2) < 0.02 first at N = ceil(z^2 * 49) = 189.
    assert items_to_settle_paired(0, 0, 50, 0.02, 0.95) == math.ceil(Z ** 2 * 49) - 50
    assert items_to_settle_paired(3, 3, 300, 0.0, 0.95) is None  # the estimate sits at the tolerance
