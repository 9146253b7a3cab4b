"""benchmarks/search_honesty.py: the recipe search with a confirmation split keeps the gate's error
level however many candidates it tries; certifying on the search items does not."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binomtest

from pipelines.evaluate.sequential import TaskMonitor
from pipelines.gate import INCONCLUSIVE, PROMOTE, REJECT, decide
from pipelines.intervals import paired_counts_interval
from pipelines.records import Fidelity, TaskFidelity

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "search_honesty.py"
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
REPS = 400


@pytest.fixture(scope="module")
def honesty():
    spec = importlib.util.spec_from_file_location("search_honesty", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def at_tolerance(honesty):
    """Eight candidates, every one's true drop exactly at the tolerance, 300 items per split."""
    return honesty.simulate(honesty.SCENARIOS["all at tolerance"](8), n=300, reps=REPS, seed=11)


def exceeds_alpha(count: int) -> float:
    """p-value of H0 'false-PROMOTE rate <= alpha' against 'greater'."""
    return binomtest(count, REPS, ALPHA, alternative="greater").pvalue


def test_confirmation_split_keeps_false_promotes_within_alpha(at_tolerance):
    assert exceeds_alpha(at_tolerance["confirm_false"]) > 0.05


def test_certifying_on_the_search_items_inflates_false_promotes(at_tolerance):
    """The same binomial test catches the broken procedures: it has the power to fail."""
    assert exceeds_alpha(at_tolerance["reuse_false"]) < 0.01
    assert exceeds_alpha(at_tolerance["naive_false"]) < 0.01


def test_a_truly_fine_candidate_is_found(honesty):
    counts = honesty.simulate(honesty.SCENARIOS["last one fine"](3), n=600, reps=200, seed=12)
    assert binomtest(counts["confirm_fine"], 200, 0.3, alternative="greater").pvalue < 0.01


def test_search_stops_at_the_first_pass_and_confirms_only_that_one(honesty):
    search, confirmed = {0: INCONCLUSIVE, 1: PROMOTE, 2: PROMOTE}, []
    chosen, decision = honesty.search_then_confirm(3, search.__getitem__, lambda k: confirmed.append(k) or REJECT)
    assert (chosen, decision, confirmed) == (1, REJECT, [1])
    assert honesty.search_then_confirm(2, lambda k: REJECT, lambda k: PROMOTE) == (None, REJECT)


def test_sequential_search_stops_where_the_pipelines_task_monitor_does(honesty):
    """Same items through evaluate/sequential.py's TaskMonitor (its own fine grid, one look per chunk):
    the same early PROMOTE / REJECT at the same item count, and no early stop where it has none."""
    candidates = [honesty.Candidate(0.0, 0.0), honesty.Candidate(0.10, 0.12), honesty.AT_TOLERANCE]
    rng = np.random.default_rng(5)
    base, variants = honesty.draw_split(rng, candidates, reps=4, n=600)
    decisions, used = honesty.sequential_decisions(base, variants)
    for r, k in np.ndindex(decisions.shape):
        status, items = monitor_stop(honesty, base[r], variants[r, k])
        assert items == used[r, k]
        if status:
            assert decisions[r, k] == {-1: PROMOTE, 1: REJECT}[status]


def monitor_stop(honesty, base, variant) -> tuple[int, int]:
    monitor = TaskMonitor(SimpleNamespace(gate=honesty.POLICY), "generate_until")
    for start in range(0, base.size, honesty.CHUNK):
        pairs = zip(base[start:start + honesty.CHUNK], variant[start:start + honesty.CHUNK])
        monitor.update([([{"score": float(b)}], [{"score": float(v)}]) for b, v in pairs])
        if monitor.status("accuracy"):
            return monitor.status("accuracy"), monitor.items
    return 0, monitor.items


def test_cached_decision_is_the_gates_own(honesty):
    """The simulation leaves out the INCONCLUSIVE hint; the decision equals gate.decide's in full."""
    for lost, gained in [(30, 24), (12, 20), (60, 10), (3, 3)]:
        interval = paired_counts_interval(lost, gained, 600, CONFIDENCE)
        task = TaskFidelity(task="t", metric="acc", n=600, base_score=0.8, variant_score=0.8,
                            delta=(gained - lost) / 600, ci_low=interval.low, ci_high=interval.high,
                            confidence=CONFIDENCE, mcnemar_p=None, right_to_wrong=lost, wrong_to_right=gained,
                            flip_rate=(lost + gained) / 600, ci_method=interval.method)
        full = decide(honesty.POLICY, Fidelity("v", "b", "", "", "", [task], None)).decision
        assert honesty.gate_decision(lost, gained, 600, CONFIDENCE, False) == full
