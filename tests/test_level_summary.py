"""One level summarizer for in-process and served timings (pipelines/bench/measure.py).

    pytest tests/test_level_summary.py
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.bench import measure
from pipelines.bench.engines import MeasuredLevel, RequestTiming, StreamTiming
from pipelines.bench.measure import summarize_level, summarize_served_level
from pipelines.config import SLOConfig

# Two repeats of two-token requests (one gap each, so a served chunk ITL is the in-process gap),
# in binary fractions of a second so both paths do exact arithmetic: (submit, first token, last token).
REQUESTS = [[(0.0, 0.125, 0.25), (0.0625, 0.25, 0.5)], [(1.0, 1.25, 1.375), (1.0, 1.0625, 1.5)]]
SLO = SLOConfig(ttft_p95_ms=200, itl_p95_ms=200, e2e_p95_ms=450)


def in_process_repeats() -> list[list[RequestTiming]]:
    return [[RequestTiming(submit, [first, last]) for submit, first, last in repeat] for repeat in REQUESTS]


def served_repeats() -> list[list[StreamTiming]]:
    return [[StreamTiming(submit, first, last, end_s=last, output_tokens=2, chunks=2) for submit, first, last in repeat]
            for repeat in REQUESTS]


def test_the_same_timings_give_the_same_level_in_process_and_served():
    in_process = summarize_level(2, in_process_repeats(), SLO)
    served = summarize_served_level(MeasuredLevel(load="c2", streams=2, rate_rps=None, repeats=served_repeats()), SLO)
    # Only the served level's load name differs: it is a label the served engine gives, not a measurement.
    assert dataclasses.replace(served, load=None) == in_process


def test_both_paths_go_through_the_one_summarizer(monkeypatch):
    calls = []
    original = measure.summarize_requests
    monkeypatch.setattr(measure, "summarize_requests", lambda *a, **k: calls.append(a) or original(*a, **k))
    summarize_level(2, in_process_repeats(), SLO)
    summarize_served_level(MeasuredLevel(load="c2", streams=2, rate_rps=None, repeats=served_repeats()), SLO)
    assert len(calls) == 2


def test_the_summary_matches_a_hand_count():
    level = summarize_level(2, in_process_repeats(), SLO)
    # Walls 0.5 s and 0.5 s; 4 tokens and 2 requests each; TTFTs 125, 187.5, 250, 62.5 ms.
    assert level.output_tokens_per_s == pytest.approx(8.0) and level.requests_per_s == pytest.approx(4.0)
    assert level.ttft_ms.p50 == pytest.approx(np.percentile([125, 187.5, 250, 62.5], 50))
    # Requests meeting TTFT <= 200, ITL <= 200 and E2E <= 450 ms: r1 of repeat 1 only (r2's E2E is 437.5
    # but its ITL 250; repeat 2: TTFT 250, and ITL 437.5).
    assert level.goodput_rps == pytest.approx((1 / 0.5 + 0 / 0.5) / 2)
