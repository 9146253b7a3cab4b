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
- A request meets the SLO when, for every target set, its TTFT <= ttft_p95_ms, the p95 of its own
  ITLs <= itl_p95_ms and its E2E <= e2e_p95_ms. Goodput = such requests per second.
- A level meets the SLO when its pooled p95 TTFT, ITL and E2E are each within the targets set.
- The knee is the largest measured batch size whose level meets the SLO; None when none does.
Exercised by `pytest tests/test_bench.py -k measure`.
"""

from __future__ import annotations

import numpy as np

from pipelines.bench.engines import RequestTiming
from pipelines.config import SLOConfig
from pipelines.records import LoadLevel, Percentiles

PERCENTILE_METHOD = "linear"


def ttft_s(timing: RequestTiming) -> float:
    return timing.token_times_s[0] - timing.submit_s


def itl_s(timing: RequestTiming) -> np.ndarray:
    return np.diff(np.asarray(timing.token_times_s, dtype=float))


def e2e_s(timing: RequestTiming) -> float:
    return timing.token_times_s[-1] - timing.submit_s


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
    return LoadLevel(
        batch_size=batch_size, requests=len(timings), repeats=len(repeats),
        output_tokens_per_s=float(tokens_per_s.mean()),
        output_tokens_per_s_std=float(tokens_per_s.std(ddof=1)) if len(repeats) > 1 else 0.0,
        requests_per_s=float(requests_per_s.mean()), ttft_ms=ttft, itl_ms=itl, e2e_ms=e2e,
        goodput_rps=float(good_per_s.mean()), meets_slo=level_meets_slo(ttft, itl, e2e, slo),
        itl_mean_ms=float(itls.mean() * 1e3), e2e_mean_ms=float(e2es.mean() * 1e3),
        peak_memory_bytes=peak_memory_bytes)


def knee_batch_size(levels: list[LoadLevel]) -> int | None:
    """Largest measured batch size meeting the SLO; None when no level does (never a guess)."""
    meeting = [level.batch_size for level in levels if level.meets_slo]
    return max(meeting) if meeting else None


def _p95_ms(values_s: np.ndarray) -> float:
    return float(np.percentile(values_s * 1e3, 95, method=PERCENTILE_METHOD))
