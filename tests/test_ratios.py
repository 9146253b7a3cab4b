"""Paired ratio intervals (pipelines/ratios.py): per-round log ratios and Fieller, against independent computations.

nice -n 10 python -m pytest tests/test_ratios.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipelines.ratios import (FIELLER, coefficient_of_variation, fieller_ratio_interval, paired_ratio_interval,
                              saving_interval)
from pipelines.records import RatioInterval

BASE = [100.0, 60.0, 95.0, 40.0, 88.0]  # tokens/s per round: a machine whose load comes and goes
VARIANT = [151.0, 88.0, 146.0, 63.0, 130.0]


@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_log_ratio_interval_is_scipys_paired_t_interval_of_the_logs_exponentiated(confidence):
    interval = paired_ratio_interval(VARIANT, BASE, confidence)
    expected = stats.ttest_rel(np.log(VARIANT), np.log(BASE)).confidence_interval(confidence)
    assert (interval.low, interval.high) == pytest.approx((math.exp(expected.low), math.exp(expected.high)))
    assert interval.estimate == pytest.approx(stats.gmean(np.array(VARIANT) / np.array(BASE)))


def test_log_ratio_interval_stays_finite_where_fiellers_is_unbounded():
    # Load slows rounds 1x, 3x, 1.5x; the variant is exactly twice as fast in each.
    base = [1000.0, 1000 / 3, 1000 / 1.5]
    variant = [2 * v for v in base]
    assert not fieller_ratio_interval(variant, base, 0.95).bounded
    interval = paired_ratio_interval(variant, base, 0.95)
    assert (interval.low, interval.estimate, interval.high) == pytest.approx((2.0, 2.0, 2.0))


def test_a_round_without_tokens_gives_no_finite_ratio():
    assert not paired_ratio_interval([1.0, 0.0], [1.0, 1.0], 0.95).bounded


@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_fieller_bounds_are_where_the_paired_t_test_of_y_minus_r_x_reaches_its_level(confidence):
    interval = fieller_ratio_interval(VARIANT, BASE, confidence)
    for bound in (interval.low, interval.high):
        differences = np.array(VARIANT) - bound * np.array(BASE)
        assert stats.ttest_1samp(differences, 0.0).pvalue == pytest.approx(1 - confidence, abs=1e-9)
    assert interval.estimate == pytest.approx(np.mean(VARIANT) / np.mean(BASE))
    assert interval.low < interval.estimate < interval.high


def test_load_that_scales_both_alike_leaves_a_tight_ratio_where_unpaired_means_spread():
    # Rounds range 40..100 tokens/s (2.5x), yet every round's ratio lies in 1.47..1.58.
    for interval in (paired_ratio_interval(VARIANT, BASE, 0.95), fieller_ratio_interval(VARIANT, BASE, 0.95)):
        assert interval.high - interval.low < 0.15 and interval.rounds == 5


def test_fieller_exactly_proportional_rounds_give_a_zero_width_interval():
    interval = fieller_ratio_interval([20.0, 22.0, 24.0], [10.0, 11.0, 12.0], 0.95)
    assert (interval.low, interval.estimate, interval.high) == pytest.approx((2.0, 2.0, 2.0))


def test_fieller_denominator_not_significantly_nonzero_is_unbounded():
    interval = fieller_ratio_interval([1.0, 1.2, 0.9], [0.1, -0.2, 0.15], 0.95)
    assert not interval.bounded and (interval.low, interval.high) == (-math.inf, math.inf)


@pytest.mark.parametrize("method", [paired_ratio_interval, fieller_ratio_interval])
def test_coverage_in_simulation_is_near_its_promise(method):
    rng = np.random.default_rng(7)
    true_ratio, hits, trials = 0.8, 0, 2000
    for _ in range(trials):
        load = rng.uniform(1.0, 2.0, size=6)  # a slowdown shared by both timings of a round
        base = 100 / load * rng.lognormal(0, 0.03, size=6)
        variant = true_ratio * 100 / load * rng.lognormal(0, 0.03, size=6)
        interval = method(variant, base, 0.95)
        hits += interval.low <= true_ratio <= interval.high
    # Binomial sd at 2000 trials is 0.5 %: 95 % +- 1.5 %.
    assert abs(hits / trials - 0.95) < 0.015


def test_saving_is_one_minus_the_inverse_ratio_at_every_bound():
    saving = saving_interval(RatioInterval(2.0, 1.6, 2.5, 0.95, 5, FIELLER))
    assert (saving.estimate, saving.low, saving.high) == pytest.approx((0.5, 0.375, 0.6))
    assert not saving_interval(RatioInterval(2.0, -math.inf, math.inf, 0.95, 5, FIELLER)).bounded


@pytest.mark.parametrize("method", [paired_ratio_interval, fieller_ratio_interval])
def test_fewer_than_two_rounds_is_an_error(method):
    with pytest.raises(ValueError, match=">= 2 paired rounds"):
        method([1.0], [1.0], 0.95)


def test_coefficient_of_variation_is_sample_std_over_mean():
    assert coefficient_of_variation([9.0, 10.0, 11.0]) == pytest.approx(np.std([9, 10, 11], ddof=1) / 10)
    assert coefficient_of_variation([5.0]) is None
