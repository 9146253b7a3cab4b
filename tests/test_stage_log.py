"""The guard run_variant wraps each stage in: times, the failed stage, results kept across a failure."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipelines import interrupts
from pipelines.stage_log import StageLog


@dataclass
class Cached:
    from_cache: bool


def test_results_and_times_survive_a_later_stage_failing():
    run = StageLog()
    with run.stage("quantize", cached=("variant",)):
        variant = run.keep(variant=Cached(from_cache=True))
    with pytest.raises(ValueError):
        with run.stage("evaluate", cached=("base_eval", "variant_eval")):
            run.keep(base_eval=Cached(from_cache=True))
            raise ValueError("lm-eval failed")
    assert variant == Cached(True) and run.results == {"variant": Cached(True), "base_eval": Cached(True)}
    assert run.failed == "evaluate"
    assert [(t.stage, t.from_cache) for t in run.times] == [("quantize", True), ("evaluate", False)]
    assert all(t.ended >= t.started for t in run.times)


def test_a_stage_is_reused_only_when_every_cached_result_came_from_the_cache():
    run = StageLog()
    with run.stage("benchmark", cached=("base_bench", "bench")):
        run.keep(base_bench=Cached(from_cache=True), bench=Cached(from_cache=False))
    with run.stage("fidelity"):
        run.keep(fidelity=Cached(from_cache=True))  # a stage that caches nothing is never "reused"
    assert [t.from_cache for t in run.times] == [False, False]
    assert run.failed is None


def test_interrupt_names_the_stage_and_untimed_steps_leave_no_stage_time():
    run = StageLog()
    with pytest.raises(KeyboardInterrupt):
        with run.stage("load base", timed=False):
            raise KeyboardInterrupt
    assert interrupts.current_stage() == "load base" and run.failed == "load base" and run.times == []
