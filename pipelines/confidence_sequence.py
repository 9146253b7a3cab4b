"""Anytime-valid confidence sequences for the mean of [0, 1]-bounded values, by betting.

The hedged-capital confidence sequence of Waudby-Smith & Ramdas (2023), "Estimating means of
bounded random variables by betting", JRSS-B 86(1):1-27, Section 4 ("hedged capital process",
their Theorem 3), with predictable plug-in bets. For a candidate mean m and values x_1, x_2, ...
in [0, 1]:

    K+_t(m) = prod_{i<=t} (1 + lambda+_i(m) (x_i - m)),   lambda+_i(m) = min(lambda_i, c / m)
    K-_t(m) = prod_{i<=t} (1 - lambda-_i(m) (x_i - m)),   lambda-_i(m) = min(lambda_i, c / (1 - m))
    K_t(m)  = max(theta K+_t(m), (1 - theta) K-_t(m))
    C_t     = {m : K_t(m) < 1 / alpha}

lambda_i = sqrt(2 log(2 / alpha) / (sigma2_{i-1} t* )) is predictable: sigma2 is the regularized
running variance (1/4 + sum (x_j - mu_j)^2) / (i + 1) with mu_j = (1/2 + sum_{k<=j} x_k) / (j + 1),
and t* = i log(1 + i) (their anytime choice; planning for one sample size instead made no difference
on the bundled suites' counts and is left out). c = 3/4: with no flip at all, c = 1/2 needed 450
paired items to bound a drop under 2 points, 3/4 needed 300. Under
the null mean m each of K+ and K- is a nonnegative supermartingale, so by Ville's inequality
P(exists t: m not in C_t) <= alpha, and each side alone errs at most alpha / 2 (theta = 1/2): the
same per-side promise as the gate's two-sided fixed-n intervals, now at every stopping time. That
is what makes stopping as soon as the data decide (pipelines/evaluate/sequential.py) safe. It
assumes the values are independent with a common mean (items in a random order); the running
intersection of C_t over the looks taken is reported, which keeps the guarantee.

C_t is found on a grid of candidate means; the bounds are its smallest and largest retained grid
points. Thresholds are grid points, so "the sequence lies below the threshold" (high < threshold:
the threshold and everything above it rejected) is decided exactly; elsewhere a bound is within one
grid step (2.5e-4 by default, 5e-4 of an accuracy drop) of the exact one.

The confseq package (Howard's, same authors' methods) was checked first: its last release,
0.0.11, is an alpha C++/pybind11 (~=2.6) source build with boost and matplotlib requirements; this
~100-line numpy version is tested against a direct loop in tests/test_confidence_sequence.py.

Exercised by: pytest tests/test_confidence_sequence.py; python benchmarks/coverage.py --sequential
"""

from __future__ import annotations

import math

import numpy as np

METHOD = "betting confidence sequence (anytime-valid)"


class BettingConfidenceSequence:
    """The running hedged-capital CS of `streams` independent sequences (1 in the pipeline)."""

    def __init__(self, alpha: float, thresholds=(), streams: int = 1, grid_step: float = 2.5e-4,
                 bet_cap: float = 0.75, theta: float = 0.5) -> None:
        grid = np.linspace(0.0, 1.0, int(round(1 / grid_step)) + 1)
        self.grid = np.unique(np.clip(np.concatenate([grid, np.asarray(thresholds, float)]), 0.0, 1.0))
        self.alpha, self.bet_cap, self.theta = alpha, bet_cap, theta
        shape = (streams, self.grid.size)
        self.log_plus, self.log_minus = np.zeros(shape), np.zeros(shape)
        self.n = 0
        self.total = np.zeros(streams)        # sum of x
        self.squares = np.zeros(streams)      # sum of (x_i - mu_i)^2
        self.low, self.high = np.zeros(streams), np.ones(streams)

    def bet_size(self) -> np.ndarray:
        """lambda for the next value, from the values seen so far only (predictable)."""
        i = self.n + 1
        variance = (0.25 + self.squares) / (self.n + 1)
        return np.sqrt(2 * math.log(2 / self.alpha) / (variance * i * math.log(1 + i)))

    def update(self, values) -> None:
        """Add values (shape (k,) for one stream, or (streams, k)), then refresh the bounds."""
        values = np.atleast_2d(np.asarray(values, dtype=float))
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError("confidence sequence values must lie in [0, 1]")
        m = self.grid[None, :]
        with np.errstate(divide="ignore"):
            cap_plus, cap_minus = self.bet_cap / m, self.bet_cap / (1 - m)
        for column in values.T:
            bet = self.bet_size()[:, None]
            step = column[:, None] - m
            with np.errstate(divide="ignore", invalid="ignore"):
                self.log_plus += np.log1p(np.minimum(bet, cap_plus) * step)
                self.log_minus += np.log1p(-np.minimum(bet, cap_minus) * step)
            self.n += 1
            self.total += column
            self.squares += (column - (0.5 + self.total) / (self.n + 1)) ** 2
        self._refresh()

    def _refresh(self) -> None:
        """Intersect the running bounds with this look's set (kept unless it is empty)."""
        retained = self.retained()
        nonempty = retained.any(axis=1)  # only a miss (probability <= alpha) empties it: keep the last bounds
        first = self.grid[np.argmax(retained, axis=1)]
        last = self.grid[self.grid.size - 1 - np.argmax(retained[:, ::-1], axis=1)]
        self.low = np.where(nonempty, np.maximum(self.low, first), self.low)
        self.high = np.where(nonempty, np.minimum(self.high, last), self.high)

    def retained(self) -> np.ndarray:
        """(streams, grid) mask of the candidate means this look keeps: K_t(m) < 1 / alpha."""
        capital = np.maximum(math.log(self.theta) + self.log_plus, math.log(1 - self.theta) + self.log_minus)
        return capital < math.log(1 / self.alpha)

    def excludes(self, threshold: float) -> np.ndarray:
        """Per stream: -1 when the whole sequence lies below `threshold`, +1 above, 0 undecided."""
        return np.where(self.high < threshold, -1, np.where(self.low > threshold, 1, 0))


def paired_to_unit(base_scores: np.ndarray, variant_scores: np.ndarray) -> np.ndarray:
    """Per-item drop (base - variant) of [0, 1] scores, in [-1, 1], mapped to [0, 1]: (drop + 1) / 2."""
    return (np.asarray(base_scores, float) - np.asarray(variant_scores, float) + 1) / 2


def unit_to_drop(value):
    return 2 * np.asarray(value, float) - 1
