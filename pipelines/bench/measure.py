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
- TPOT = (E2E - TTFT) / (N - 1) per request with N >= 2, N its output tokens (the first token
  excluded, as in vLLM's benchmarks; GuideLLM's own "time per output token" includes it, guidellm #1144).
- One summarizer (`summarize_requests`) computes all of it for in-process and served levels alike,
  from `TimedRequest`s; each engine shape only maps its timings onto those (`timed_request`,
  `timed_stream`), so the same timings give the same LoadLevel whichever path they came by.
Served levels (bench.engine=openai, from `StreamTiming`s), where the same definitions hold except:
- E2E ends when the response ends (after the last chunk); ITL is per request the mean gap between
  its streamed chunks, (last chunk - first chunk) / (chunks - 1), since GuideLLM keeps only the
  first and last chunk times and the chunk count; ITL percentiles are over those request means.
- A level is at the load of its concurrent streams; a rate-driven level at its measured mean of
  requests in flight (sum of E2E / wall time, Little's law), rounded up. The knee is the level with
  the most requests in flight that meets the SLO (ties: the higher request rate).
- Errored and incomplete requests are counted, not timed; a level where none succeeded is an error.
- A repeat's mean ITL (what paired ITL ratios use) is the mean of its requests' chunk ITLs; NaN when
  every request of the repeat came in one chunk (ITL percentiles are NaN when no request of the level has a gap).
Exercised by `pytest tests/test_bench.py -k measure` and `pytest tests/test_bench_served.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.bench.engines import MeasuredLevel, RequestTiming, StreamTiming
from pipelines.config import SLOConfig
from pipelines.records import LoadLevel, Percentiles

PERCENTILE_METHOD = "linear"


@dataclass(frozen=True)
class TimedRequest:
    """One request's clock readings as every level is summarized from, whichever engine timed it."""

    submit_s: float
    first_token_s: float
    # The last token (in process) or the end of the response (served).
    end_s: float
    output_tokens: int
    # What its ITL is: every gap between its tokens (in process), its mean chunk gap (served; none
    # with a single chunk).
    itls_s: np.ndarray

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.submit_s

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.submit_s


def timed_request(timing: RequestTiming) -> TimedRequest:
    """An in-process request: one reading per token."""
    return TimedRequest(timing.submit_s, timing.token_times_s[0], timing.token_times_s[-1],
                        len(timing.token_times_s), np.diff(np.asarray(timing.token_times_s, dtype=float)))


def timed_stream(timing: StreamTiming) -> TimedRequest:
    """A streamed request: GuideLLM keeps its first and last chunk times and the chunk count."""
    itl = chunk_itl_s(timing)
    return TimedRequest(timing.submit_s, timing.first_token_s, timing.end_s, timing.output_tokens,
                        np.array([] if itl is None else [itl], dtype=float))


def chunk_itl_s(timing: StreamTiming) -> float | None:
    """Mean gap between the request's streamed chunks; None with a single chunk (no gap)."""
    if timing.chunks < 2:
        return None
    return (timing.last_token_s - timing.first_token_s) / (timing.chunks - 1)


def tpot_s(ttft: float, e2e: float, output_tokens: int) -> float:
    """Time per output token after the first: (E2E - TTFT) / (N - 1); needs N >= 2."""
    return (e2e - ttft) / (output_tokens - 1)


def percentiles_ms(values_s: np.ndarray | list[float]) -> Percentiles:
    p50, p95, p99 = np.percentile(np.asarray(values_s, dtype=float) * 1e3, [50, 95, 99], method=PERCENTILE_METHOD)
    return Percentiles(p50=float(p50), p95=float(p95), p99=float(p99))


def meets_slo(request: TimedRequest, slo: SLOConfig) -> bool:
    itl = _p95_ms(request.itls_s) if request.itls_s.size else None
    checks = [(slo.ttft_p95_ms, request.ttft_s * 1e3), (slo.itl_p95_ms, itl), (slo.e2e_p95_ms, request.e2e_s * 1e3)]
    # A target that cannot be measured on this request (one chunk: no ITL) is not met.
    return all(observed is not None and observed <= target for target, observed in checks if target is not None)


def request_meets_slo(timing: RequestTiming, slo: SLOConfig) -> bool:
    return meets_slo(timed_request(timing), slo)


def level_meets_slo(ttft: Percentiles, itl: Percentiles, e2e: Percentiles, slo: SLOConfig) -> bool:
    checks = [(slo.ttft_p95_ms, ttft.p95), (slo.itl_p95_ms, itl.p95), (slo.e2e_p95_ms, e2e.p95)]
    return all(observed <= target for target, observed in checks if target is not None)


def summarize_level(batch_size: int, repeats: list[list[RequestTiming]], slo: SLOConfig,
                    peak_memory_bytes: int | None = None) -> LoadLevel:
    """One in-process load level's metrics from the raw timings of each repeat."""
    return summarize_requests([[timed_request(t) for t in repeat] for repeat in repeats], slo, batch_size,
                              peak_memory_bytes=peak_memory_bytes)


class LevelFailed(RuntimeError):
    """A served load level where no request succeeded: its numbers would be silent zeros."""


def summarize_served_level(level: MeasuredLevel, slo: SLOConfig) -> LoadLevel:
    """One served load level's metrics from the per-request timings of each repeat."""
    repeats = [repeat for repeat in level.repeats if repeat]
    if not repeats:
        reason = f": {level.first_error}" if level.first_error else ""
        raise LevelFailed(f"load level {level.load}: none of its requests succeeded ({level.errored} errored, "
                          f"{level.incomplete} incomplete){reason}")
    return summarize_requests([[timed_stream(t) for t in repeat] for repeat in repeats], slo, level.streams,
                              load=level.load, rate_rps=level.rate_rps, errored_requests=level.errored,
                              incomplete_requests=level.incomplete)


def summarize_requests(repeats: list[list[TimedRequest]], slo: SLOConfig, batch_size: int | None,
                       **labels) -> LoadLevel:
    """THE level summary, in-process and served alike: `labels` are LoadLevel fields passed through
    (load, rate_rps, error counts, peak memory); batch_size None means the measured requests in flight."""
    timings = [t for repeat in repeats for t in repeat]
    walls = np.array([max(t.end_s for t in repeat) - min(t.submit_s for t in repeat) for repeat in repeats])
    tokens_per_s = np.array([sum(t.output_tokens for t in repeat) for repeat in repeats]) / walls
    requests_per_s = np.array([len(repeat) for repeat in repeats]) / walls
    good_per_s = np.array([sum(meets_slo(t, slo) for t in repeat) for repeat in repeats]) / walls
    ttfts, e2es = np.array([t.ttft_s for t in timings]), np.array([t.e2e_s for t in timings])
    itls = np.concatenate([t.itls_s for t in timings])
    tpots = np.array([tpot_s(t.ttft_s, t.e2e_s, t.output_tokens) for t in timings if t.output_tokens >= 2])
    ttft, e2e = percentiles_ms(ttfts), percentiles_ms(e2es)
    itl = percentiles_ms(itls) if itls.size else Percentiles(math.nan, math.nan, math.nan)
    return LoadLevel(
        batch_size=batch_size or _in_flight(repeats, walls), requests=len(timings), repeats=len(repeats),
        output_tokens_per_s=float(tokens_per_s.mean()),
        output_tokens_per_s_std=float(tokens_per_s.std(ddof=1)) if len(repeats) > 1 else 0.0,
        requests_per_s=float(requests_per_s.mean()), ttft_ms=ttft, itl_ms=itl, e2e_ms=e2e,
        goodput_rps=float(good_per_s.mean()), meets_slo=level_meets_slo(ttft, itl, e2e, slo),
        itl_mean_ms=float(itls.mean() * 1e3) if itls.size else None, e2e_mean_ms=float(e2es.mean() * 1e3),
        tpot_ms=percentiles_ms(tpots) if tpots.size else None,
        repeat_output_tokens_per_s=[float(v) for v in tokens_per_s],
        repeat_ttft_mean_ms=[float(np.mean([t.ttft_s for t in repeat]) * 1e3) for repeat in repeats],
        repeat_itl_mean_ms=[_repeat_itl_mean_ms(repeat) for repeat in repeats], **labels)


def _in_flight(repeats: list[list[TimedRequest]], walls: np.ndarray) -> int:
    """Mean requests in flight (sum of E2E / wall time, Little's law), rounded up."""
    in_flight = float(np.mean([sum(t.e2e_s for t in repeat) / wall for repeat, wall in zip(repeats, walls)]))
    return max(1, math.ceil(round(in_flight, 9)))


def _repeat_itl_mean_ms(repeat: list[TimedRequest]) -> float:
    """Mean of the repeat's ITLs; NaN when no request of it has a gap (one token, or one chunk)."""
    itls = np.concatenate([t.itls_s for t in repeat])
    return float(itls.mean() * 1e3) if itls.size else math.nan


def _p95_ms(values_s: np.ndarray) -> float:
    return float(np.percentile(values_s * 1e3, 95, method=PERCENTILE_METHOD))


def knee_level(levels: list[LoadLevel]) -> LoadLevel | None:
    """The level meeting the SLO with the most requests in flight (ties: the higher request rate)."""
    meeting = [level for level in levels if level.meets_slo]
    return max(meeting, key=lambda level: (level.batch_size, level.requests_per_s)) if meeting else None
