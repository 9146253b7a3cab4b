"""The betting confidence sequence (pipelines/confidence_sequence.py) against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.confidence_sequence import BettingConfidenceSequence, paired_to_unit, unit_to_drop


def direct_capital(values, m, alpha=0.05, cap=0.75, theta=0.5):
    """Waudby-Smith & Ramdas (2023) hedged capital K_t(m) after all `values`, written out as the
    paper states it: a plain loop over items with the predictable plug-in bet recomputed each time."""
    plus = minus = 1.0
    mean_terms, squares = [], 0.0
    for i, x in enumerate(values, start=1):
        sigma2 = (0.25 + squares) / i  # (1/4 + sum_{j<i} (x_j - mu_j)^2) / ((i - 1) + 1)
        bet = math.sqrt(2 * math.log(2 / alpha) / (sigma2 * i * math.log(1 + i)))
        bet_plus = min(bet, cap / m) if m > 0 else bet
        bet_minus = min(bet, cap / (1 - m)) if m < 1 else bet
        plus *= 1 + bet_plus * (x - m)
        minus *= 1 - bet_minus * (x - m)
        mean_terms.append(x)
        mu_i = (0.5 + sum(mean_terms)) / (i + 1)
        squares += (x - mu_i) ** 2
    return max(theta * plus, (1 - theta) * minus)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retained_set_matches_the_direct_capital(seed):
    rng = np.random.default_rng(seed)
    values = rng.choice([0.0, 0.5, 1.0], p=[0.05, 0.9, 0.05], size=120)
    cs = BettingConfidenceSequence(0.05, grid_step=0.01)
    cs.update(values[:70])
    cs.update(values[70:])  # two looks give the same capital as one
    retained = cs.retained()[0]
    for m, kept in zip(cs.grid, retained):
        capital = direct_capital(values, m)
        if abs(math.log(capital) - math.log(20)) > 1e-9:  # not on the barrier itself
            assert kept == (capital < 20), m


def test_bounds_are_the_extreme_retained_points_of_the_running_intersection():
    values = np.full(200, 0.5)
    cs = BettingConfidenceSequence(0.05, grid_step=0.01)
    highs = []
    for start in range(0, 200, 50):
        cs.update(values[start:start + 50])
        kept = cs.grid[cs.retained()[0]]
        assert cs.high[0] == min([kept.max(), *highs]) and cs.low[0] <= kept.min()
        highs.append(cs.high[0])
    assert highs == sorted(highs, reverse=True)  # the running intersection only shrinks
    assert 0.5 in cs.grid[cs.retained()[0]]


def test_decision_at_a_known_boundary():
    """Constant 0.5 (no item flips): K-(m) = prod (1 + min(bet_i, c/(1-m)) (m - 1/2)). The first
    look where the direct capital at m = 0.51 (a 2-point drop) reaches 2/alpha is where the CS
    must first lie wholly below it."""
    threshold = 0.51
    first = next(t for t in range(1, 2000) if direct_capital(np.full(t, 0.5), threshold) >= 20)
    cs = BettingConfidenceSequence(0.05, thresholds=[threshold])
    decided_at = None
    for t in range(1, first + 2):
        cs.update([0.5])
        if decided_at is None and cs.excludes(threshold)[0] == -1:
            decided_at = t
    assert decided_at == first
    assert 150 < first < 400  # about 300 items without a flip certify a 2-point bound


def test_miss_rate_over_every_look_stays_within_alpha():
    """Bernoulli(0.3) streams, a look after every 10 items up to 500: the share of streams whose
    running CS ever excludes 0.3 is at most alpha (plus 3 Monte-Carlo standard errors)."""
    rng = np.random.default_rng(7)
    streams, alpha = 600, 0.05
    cs = BettingConfidenceSequence(alpha, thresholds=[0.3], streams=streams, grid_step=0.01)
    missed = np.zeros(streams, bool)
    for _ in range(50):
        cs.update((rng.random((streams, 10)) < 0.3).astype(float))
        missed |= cs.excludes(0.3) != 0
    assert missed.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / streams)


def test_paired_scale_round_trips():
    x = paired_to_unit([1, 0, 1, 0], [0, 1, 1, 0])
    assert list(x) == [1.0, 0.0, 0.5, 0.5]
    assert list(unit_to_drop(x)) == [1.0, -1.0, 0.0, 0.0]


def test_values_outside_the_unit_interval_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BettingConfidenceSequence(0.05).update([1.5])
