"""A record made at one confidence level, gated at another: rescaling its interval vs recomputing it.

    python benchmarks/confidence_levels.py                 # ~40 s on 2 cores
    python benchmarks/confidence_levels.py --reps 400000

Paired right/wrong items are simulated with the true accuracy drop exactly at the tolerance (2
points): lost items at rate (discordance + 0.02) / 2, gained at (discordance - 0.02) / 2. Each
replicate's Tango interval is made at the record's level and gated at the gate's two ways: the old
rule (half-width rescaled by z(gate) / z(record) around the midpoint, as for a Wald interval) and
the gate's (Tango recomputed from the counts at the gate's level, pipelines/gate.drop_interval).
False-PROMOTE = share whose upper bound of the drop < tolerance; the promise is (1 - gate level) / 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.intervals import tango_interval, z_value  # noqa: E402

TOLERANCE = 0.02
# Discordance (share of items that flip) 2 % means every flip is a loss: Tango is most asymmetric there.
GRID = [(n, discordance, record, gate) for n in (100, 400, 1000) for discordance in (0.02, 0.03, 0.05)
        for record, gate in ((0.80, 0.95), (0.90, 0.95), (0.95, 0.99))]


def false_promote(n: int, discordance: float, record: float, gate: float, reps: int, seed: int) -> tuple[float, float]:
    """(rescaled, recomputed) false-PROMOTE rates at a true drop equal to the tolerance."""
    rng = np.random.default_rng(seed)
    lost_p, gained_p = (discordance + TOLERANCE) / 2, (discordance - TOLERANCE) / 2
    counts = rng.multinomial(n, [lost_p, gained_p, 1 - lost_p - gained_p], size=reps)
    lost, gained = counts[:, 0], counts[:, 1]
    # tango_interval(lost, gained, n) bounds (lost - gained) / n: the drop.
    drop_low, drop_high = tango_interval(lost, gained, n, record)
    middle, half = (drop_low + drop_high) / 2, (drop_high - drop_low) / 2
    rescaled_high = middle + half * z_value(gate) / z_value(record)
    _, exact_high = tango_interval(lost, gained, n, gate)
    return float(np.mean(rescaled_high < TOLERANCE)), float(np.mean(exact_high < TOLERANCE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100_000)
    args = parser.parse_args()
    print(f"False-PROMOTE at a true drop equal to the tolerance ({TOLERANCE}), {args.reps:,} replicates each\n")
    print("| n | discordance | record level | gate level | promise | rescaled (old) | recomputed (now) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for index, (n, discordance, record, gate) in enumerate(GRID):
        rescaled, exact = false_promote(n, discordance, record, gate, args.reps, seed=index)
        se = np.sqrt((1 - gate) / 2 * (1 - (1 - gate) / 2) / args.reps)
        flag = " **over**" if rescaled > (1 - gate) / 2 + 3 * se else ""
        print(f"| {n} | {discordance:.0%} | {record:.0%} | {gate:.0%} | {(1 - gate) / 2:.2%} (± {3 * se:.2%}) "
              f"| {rescaled:.2%}{flag} | {exact:.2%} |")


if __name__ == "__main__":
    main()
