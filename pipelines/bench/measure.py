"""THE one place benchmark metrics are computed, from raw per-request timings only.

Definitions (times are `time.perf_counter` seconds, reported in ms):
- TTFT = first token time - submit time; E2E = last token time - submit time.
- ITL = the gaps between consecutive output tokens of one request (N tokens give N-1 gaps).
- Percentiles p50/p95/p99: `numpy.percentile(..., method="linear")` (linear interpolation between
  order statistics, numpy's default), pooled over every measured request of every repeat
  (ITL pooled over every gap of every request).
- A repeat's wall time = last token time of any of its requests - first submit time among them.
  Output tokens/s, requests/s and goodput are computed per repeat over that wall time and then
  averaged over repeats; the spread is the sample std (ddof=1) of the per-repeat tokens/s (0 for one repeat).
  Each repeat's tokens/s, mean TTFT and mean ITL are kept too: paired ratios are computed from them.
- A request meets the SLO when, for every target set, its TTFT <= ttft_p95_ms, the p95 of its own
  ITLs <= itl_p95_ms and its E2E <= e2e_p95_ms. Goodput = such requests per second.
- A level meets the SLO when its pooled p95 TTFT, ITL and E2E are each within the targets set.
- The knee (`knee_level`, in-process and served alike) is the level meeting the SLO with the most
  requests in flight (in process: the largest batch size); None when none does. The bench stage
  stores it in the BenchResult (knee_batch_size, knee_load), whose `cost_level()` is what cost,
  report, tracker and gate read: the knee, else the level with the most output tokens/s.
- TPOT = (E2E - TTFT) / (N - 1) per request, N its output tokens (the first token excluded, as in
  vLLM's benchmarks; GuideLLM's own "time per output token" includes it, guidellm #1144).
Served levels (bench.engine=openai, from `StreamTiming`s), where the same definitions hold except:
- E2E ends when the response ends (after the last chunk); ITL is per request the mean gap between
  its streamed chunks, (last chunk - first chunk) / (chunks - 1), since GuideLLM keeps only the
  first and last chunk times and the chunk count; ITL percentiles are over those request means.
- A level is at the load of its concurrent streams; a rate-driven level at its measured mean of
  requests in flight (sum of E2E / wall time, Little's law), rounded up. The knee is the level with
  the most requests in flight that meets the SLO (ties: the higher request rate).
- Errored and incomplete requests are counted, not timed; a level where none succeeded is an error.
- A repeat's mean ITL (what paired ITL ratios use) is the mean of its requests' chunk ITLs; NaN when
  every request of the repeat came in one chunk.
Exercised by `pytest tests/test_bench.py -k measure` and `pytest tests/test_bench_served.py`.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.bench.engines import MeasuredLevel, RequestTiming, StreamTiming
from pipelines.config import SLOConfig
from pipelines.records import LoadLevel, Percentiles

PERCENTILE_METHOD = "linear"


def ttft_s(timing: RequestTiming) -> float:
    return timing.token_times_s[0] - timing.submit_s


def itl_s(timing: RequestTiming) -> np.ndarray:
    return np.diff(np.asarray(timing.token_times_s, dtype=float))


def e2e_s(timing: RequestTiming) -> float:
    return timing.token_times_s[-1] - timing.submit_s


def tpot_s(ttft: float, e2e: float, output_tokens: int) -> float:
    """Time per output token after the first: (E2E - TTFT) / (N - 1); needs N >= 2."""
    return (e2e - ttft) / (output_tokens - 1)


def percentiles_ms(values_s: np.ndarray | list[float]) -> Percentiles:
    p50, p95, p99 = np.percentile(np.asarray(values_s, dtype=float) * 1e3, [50, 95, 99], method=PERCENTILE_METHOD)
    return Percentiles(p50=float(p50), p95=float(p95), p99=float(p99))


def wall_s(timings: list[RequestTiming]) -> float:
    return max(t.token_times_s[-1] for t in timings) - min(t.submit_s for t in timings)


def request_meets_slo(timing: RequestTiming, slo: SLOConfig) -> bool:
    checks = [
        (slo.ttft_p95_ms, ttft_s(timing) * 1e3),
        (slo.itl_p95_ms, _p95_ms(itl_s(timing))),
        (slo.e2e_p95_ms, e2e_s(timing) * 1e3),
    ]
    return all(observed <= target for target, observed in checks if target is not None)


def level_meets_slo(ttft: Percentiles, itl: Percentiles, e2e: Percentiles, slo: SLOConfig) -> bool:
    checks = [(slo.ttft_p95_ms, ttft.p95), (slo.itl_p95_ms, itl.p95), (slo.e2e_p95_ms, e2e.p95)]
    return all(observed <= target for target, observed in checks if target is not None)


def summarize_level(batch_size: int, repeats: list[list[RequestTiming]], slo: SLOConfig,
                    peak_memory_bytes: int | None = None) -> LoadLevel:
    """One load level's metrics from the raw timings of each repeat."""
    timings = [t for repeat in repeats for t in repeat]
    walls = np.array([wall_s(repeat) for repeat in repeats])
    tokens_per_s = np.array([sum(len(t.token_times_s) for t in repeat) for repeat in repeats]) / walls
    requests_per_s = np.array([len(repeat) for repeat in repeats]) / walls
    good_per_s = np.array([sum(request_meets_slo(t, slo) for t in repeat) for repeat in repeats]) / walls
    ttfts = np.array([ttft_s(t) for t in timings])
    itls = np.concatenate([itl_s(t) for t in timings])
    e2es = np.array([e2e_s(t) for t in timings])
    ttft, itl, e2e = percentiles_ms(ttfts), percentiles_ms(itls), percentiles_ms(e2es)
    tpot = percentiles_ms([tpot_s(ttft_s(t), e2e_s(t), len(t.token_times_s)) for t in timings])
    return LoadLevel(
        batch_size=batch_size, requests=len(timings), repeats=len(repeats),
        output_tokens_per_s=float(tokens_per_s.mean()),
        output_tokens_per_s_std=float(tokens_per_s.std(ddof=1)) if len(repeats) > 1 else 0.0,
        requests_per_s=float(requests_per_s.mean()), ttft_ms=ttft, itl_ms=itl, e2e_ms=e2e,
        goodput_rps=float(good_per_s.mean()), meets_slo=level_meets_slo(ttft, itl, e2e, slo),
        itl_mean_ms=float(itls.mean() * 1e3), e2e_mean_ms=float(e2es.mean() * 1e3),
        peak_memory_bytes=peak_memory_bytes, tpot_ms=tpot,
        repeat_output_tokens_per_s=[float(v) for v in tokens_per_s],
        repeat_ttft_mean_ms=[float(np.mean([ttft_s(t) for t in repeat]) * 1e3) for repeat in repeats],
        repeat_itl_mean_ms=[float(np.concatenate([itl_s(t) for t in repeat]).mean() * 1e3) for repeat in repeats])


def _p95_ms(values_s: np.ndarray) -> float:
    return float(np.percentile(values_s * 1e3, 95, method=PERCENTILE_METHOD))


class LevelFailed(RuntimeError):
    """A served load level where no request succeeded: its numbers would be silent zeros."""


def stream_ttft_s(timing: StreamTiming) -> float:
    return timing.first_token_s - timing.submit_s


def stream_e2e_s(timing: StreamTiming) -> float:
    return timing.end_s - timing.submit_s


def chunk_itl_s(timing: StreamTiming) -> float | None:
    """Mean gap between the request's streamed chunks; None with a single chunk (no gap)."""
    if timing.chunks < 2:
        return None
    return (timing.last_token_s - timing.first_token_s) / (timing.chunks - 1)


def stream_wall_s(timings: list[StreamTiming]) -> float:
    return max(t.end_s for t in timings) - min(t.submit_s for t in timings)


def stream_meets_slo(timing: StreamTiming, slo: SLOConfig) -> bool:
    itl = chunk_itl_s(timing)
    checks = [(slo.ttft_p95_ms, stream_ttft_s(timing) * 1e3),
              (slo.itl_p95_ms, None if itl is None else itl * 1e3),
              (slo.e2e_p95_ms, stream_e2e_s(timing) * 1e3)]
    # A target that cannot be measured on this request (one chunk: no ITL) is not met.
    return all(observed is not None and observed <= target for target, observed in checks if target is not None)


def summarize_served_level(level: MeasuredLevel, slo: SLOConfig) -> LoadLevel:
    """One served load level's metrics from the per-request timings of each repeat."""
    repeats = [repeat for repeat in level.repeats if repeat]
    if not repeats:
        reason = f": {level.first_error}" if level.first_error else ""
        raise LevelFailed(f"load level {level.load}: none of its requests succeeded ({level.errored} errored, "
                          f"{level.incomplete} incomplete){reason}")
    timings = [t for repeat in repeats for t in repeat]
    walls = np.array([stream_wall_s(repeat) for repeat in repeats])
    tokens_per_s = np.array([sum(t.output_tokens for t in repeat) for repeat in repeats]) / walls
    requests_per_s = np.array([len(repeat) for repeat in repeats]) / walls
    good_per_s = np.array([sum(stream_meets_slo(t, slo) for t in repeat) for repeat in repeats]) / walls
    ttfts = np.array([stream_ttft_s(t) for t in timings])
    e2es = np.array([stream_e2e_s(t) for t in timings])
    itls = np.array([itl for t in timings if (itl := chunk_itl_s(t)) is not None])
    tpots = np.array([tpot_s(stream_ttft_s(t), stream_e2e_s(t), t.output_tokens) for t in timings
                      if t.output_tokens >= 2])
    ttft, e2e = percentiles_ms(ttfts), percentiles_ms(e2es)
    itl = percentiles_ms(itls) if itls.size else Percentiles(math.nan, math.nan, math.nan)
    in_flight = float(np.mean([sum(stream_e2e_s(t) for t in repeat) / wall for repeat, wall in zip(repeats, walls)]))
    return LoadLevel(
        batch_size=level.streams or max(1, math.ceil(round(in_flight, 9))), requests=len(timings),
        repeats=len(repeats), output_tokens_per_s=float(tokens_per_s.mean()),
        output_tokens_per_s_std=float(tokens_per_s.std(ddof=1)) if len(repeats) > 1 else 0.0,
        requests_per_s=float(requests_per_s.mean()), ttft_ms=ttft, itl_ms=itl, e2e_ms=e2e,
        goodput_rps=float(good_per_s.mean()), meets_slo=level_meets_slo(ttft, itl, e2e, slo),
        itl_mean_ms=float(itls.mean() * 1e3) if itls.size else None, e2e_mean_ms=float(e2es.mean() * 1e3),
        load=level.load, rate_rps=level.rate_rps, tpot_ms=percentiles_ms(tpots) if tpots.size else None,
        errored_requests=level.errored, incomplete_requests=level.incomplete,
        repeat_output_tokens_per_s=[float(v) for v in tokens_per_s],
        repeat_ttft_mean_ms=[float(np.mean([stream_ttft_s(t) for t in repeat]) * 1e3) for repeat in repeats],
        repeat_itl_mean_ms=[_repeat_chunk_itl_mean_ms(repeat) for repeat in repeats])


def _repeat_chunk_itl_mean_ms(repeat: list[StreamTiming]) -> float:
    """Mean of the repeat's per-request chunk ITLs; NaN when every request came in one chunk (no gap)."""
    itls = [itl for t in repeat if (itl := chunk_itl_s(t)) is not None]
    return float(np.mean(itls) * 1e3) if itls else math.nan


def knee_level(levels: list[LoadLevel]) -> LoadLevel | None:
    """The level meeting the SLO with the most requests in flight (ties: the higher request rate)."""
    meeting = [level for level in levels if level.meets_slo]
    return max(meeting, key=lambda level: (level.batch_size, level.requests_per_s)) if meeting else None
