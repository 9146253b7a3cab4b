"""Benchmark measurement, scenario, hf engine and cost model: `nice -n 10 pytest tests/test_bench.py`."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pipelines.bench.engines import RequestTiming
from pipelines.bench.measure import knee_level, request_meets_slo, summarize_level
from pipelines.config import BenchConfig, SLOConfig
from pipelines.cost import (decode_step_bound_s, estimate_cost, load_hardware, prefill_bound_s,
                            replicas_needed, usd_per_million_tokens)
from pipelines.errors import ConfigError
from pipelines.records import BenchResult
from pipelines.shape import ModelShape, llama_parameter_count, read_model_shape

from conftest import load_level, make_outcome

LLAMA3_8B = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
             "intermediate_size": 14336, "num_hidden_layers": 32, "vocab_size": 128256,
             "tie_word_embeddings": False}


def timing(submit: float, *tokens: float) -> RequestTiming:
    return RequestTiming(submit_s=submit, token_times_s=list(tokens))


# Two repeats of two requests each; times in seconds.
REPEATS = [
    [timing(0.0, 0.10, 0.12, 0.15), timing(0.0, 0.10, 0.12, 0.15)],
    [timing(1.0, 1.30, 1.31, 1.33), timing(1.2, 1.25, 1.45, 1.50)],
]


def level(batch_size: int, meets: bool, tokens_per_s: float = 100.0, e2e_mean_ms: float = 500.0, itl_mean_ms=10.0):
    return load_level(batch_size=batch_size, output_tokens_per_s=tokens_per_s, meets_slo=meets,
                      itl_mean_ms=itl_mean_ms, e2e_mean_ms=e2e_mean_ms, peak_memory_bytes=1)


def bench_result(levels) -> BenchResult:
    knee = knee_level(levels)
    return BenchResult(variant="v", engine="hf", device="cpu", levels=levels,
                       knee_batch_size=knee.batch_size if knee else None,
                       peak_memory_bytes=1, memory_kind="process_rss_peak_sampled", checkpoint_bytes=1)


def test_measure_percentiles_match_numpy_on_pooled_ttft_itl_e2e():
    result = summarize_level(2, REPEATS, SLOConfig())
    ttft = np.array([0.10, 0.10, 0.30, 0.05]) * 1e3
    itl = np.array([0.02, 0.03, 0.02, 0.03, 0.01, 0.02, 0.20, 0.05]) * 1e3
    e2e = np.array([0.15, 0.15, 0.33, 0.30]) * 1e3
    for got, values in ((result.ttft_ms, ttft), (result.itl_ms, itl), (result.e2e_ms, e2e)):
        expected = np.percentile(values, [50, 95, 99])
        assert [got.p50, got.p95, got.p99] == pytest.approx(expected)
    assert result.itl_mean_ms == pytest.approx(itl.mean())
    assert result.e2e_mean_ms == pytest.approx(e2e.mean())


def test_measure_throughput_is_per_repeat_wall_time_mean_and_sample_std():
    result = summarize_level(2, REPEATS, SLOConfig())
    # Repeat 1: 6 tokens over 0.15 s; repeat 2: 6 tokens from submit 1.0 to last token 1.50.
    per_repeat = np.array([6 / 0.15, 6 / 0.50])
    assert result.output_tokens_per_s == pytest.approx(per_repeat.mean())
    assert result.output_tokens_per_s_std == pytest.approx(np.std(per_repeat, ddof=1))
    assert result.repeat_output_tokens_per_s == pytest.approx(per_repeat)  # what paired ratios are built from
    assert result.requests_per_s == pytest.approx(np.mean([2 / 0.15, 2 / 0.50]))
    assert result.requests == 4


def test_goodput_counts_requests_meeting_their_own_ttft_and_itl_p95():
    slo = SLOConfig(ttft_p95_ms=200, itl_p95_ms=100)
    # Repeat 2: the first request's TTFT is 300 ms, the second's ITL p95 is over 100 ms.
    assert [request_meets_slo(t, slo) for t in REPEATS[1]] == [False, False]
    result = summarize_level(2, REPEATS, slo)
    assert result.goodput_rps == pytest.approx(np.mean([2 / 0.15, 0 / 0.50]))


def test_level_meets_slo_on_pooled_p95_and_knee_is_largest_meeting_level():
    assert not summarize_level(2, REPEATS, SLOConfig(ttft_p95_ms=200)).meets_slo
    assert summarize_level(2, REPEATS, SLOConfig(ttft_p95_ms=300)).meets_slo
    assert knee_level([level(1, True), level(2, True), level(4, False)]).batch_size == 2


def test_no_level_meets_slo_reports_cost_at_best_measured_load_flagged():
    levels = [level(1, False, tokens_per_s=40), level(2, False, tokens_per_s=70, e2e_mean_ms=900)]
    bench = bench_result(levels)
    shape = ModelShape(params=5e6, layers=4, kv_heads=4, head_dim=64, weight_bytes=20_000_000, dtype="float32",
                       compute_dtype="float32")
    cost = estimate_cost(bench, load_hardware("cpu-2core"), BenchConfig(name="t"), shape)
    assert bench.knee_batch_size is None
    assert cost.measured.slo_met is False and cost.measured.batch_size == 2
    assert cost.measured.usd_per_million_output_tokens == pytest.approx(0.0893 / (70 * 3600) * 1e6)
    assert all(estimate.basis == "projected" for estimate in cost.projected)


def test_usd_per_million_tokens_hand_worked():
    # $3.90/h at 1000 tokens/s: 3.6e6 tokens per hour -> 3.90 / 3.6 = $1.0833 per 1M tokens.
    assert usd_per_million_tokens(3.90, 1000) == pytest.approx(3.90 / 3.6)


def test_replicas_by_littles_law_hand_worked():
    # 20 req/s * 2 s in system = 40 in flight; * 1.25 headroom = 50; / 16 per replica = 3.125 -> 4.
    assert replicas_needed(20, 2.0, 16, 0.25) == 4
    # Exactly 2.0 replicas must not round up to 3 through float noise: 0.4 * 5 * 1.0 / 1 = 2.
    assert replicas_needed(0.4, 5.0, 1, 0.0) == 2


def test_measured_cost_at_knee_hand_worked():
    bench = bench_result([level(1, True, tokens_per_s=50), level(4, True, tokens_per_s=160, e2e_mean_ms=800)])
    hardware = load_hardware("cpu-2core")
    cfg = BenchConfig(name="t", target_qps=5, headroom=0.25)
    shape = ModelShape(5e6, 4, 4, 64, 20_000_000, "float32", "float32")
    measured = estimate_cost(bench, hardware, cfg, shape).measured
    assert measured.slo_met
    # Knee 4: 5 req/s * 0.8 s = 4 in flight * 1.25 = 5 / 4 per replica = 1.25 -> 2 replicas.
    assert measured.replicas_for_target == 2
    assert measured.usd_per_million_output_tokens == pytest.approx(0.0893 / (160 * 3600) * 1e6)
    assert measured.monthly_usd == pytest.approx(2 * 0.0893 * 730)


def test_decode_at_the_knee_is_shown_beside_its_roofline_bound_hand_worked():
    bench = bench_result([level(1, True), level(4, True, itl_mean_ms=20.0)])
    shape = ModelShape(5e6, 4, 4, 64, 20_000_000, "float32", "float32")
    cost = estimate_cost(bench, load_hardware("cpu-2core"), BenchConfig(name="t", input_tokens=64, output_tokens=32),
                         shape)
    # Knee batch 4 at 20 ms per step: 4 / 0.020 = 200 tokens/s measured.
    assert cost.decode_tokens_per_s == pytest.approx(200.0)
    # Bound: 4 sequences per step that reads 20 MB of weights + 4 * (2*4*4*64*4 B = 8192 B) * 80 tokens of
    # context (64 + 32/2) from 20 GB/s of memory bandwidth (flops are not the limit here).
    step_s = (20_000_000 + 4 * 8192 * 80) / 20e9
    assert cost.decode_roofline_tokens_per_s == pytest.approx(4 / step_s)
    assert cost.saving_vs_base is None  # no base record of the same paired run


def test_llama3_8b_roofline_on_h100_hand_worked():
    # Params: embeddings 2 * 128256 * 4096 = 1.0507e9; per layer attention 4096*128*(2*32+2*8) = 41.9e6,
    # MLP 3*4096*14336 = 176.2e6, norms 8192 -> 218.1e6 * 32 = 6.979e9; total 8.03e9.
    params = llama_parameter_count(LLAMA3_8B)
    assert params == pytest.approx(8.03e9, rel=1e-3)
    shape = ModelShape(params, 32, 8, 128, int(16.06e9), "bfloat16", "bfloat16")
    h100 = load_hardware("h100")
    # Batch 1, KV ignored (context 0): 3350e9 B/s / 16.06e9 B = 208.6 tokens/s.
    assert 1 / decode_step_bound_s(shape, h100, 1, context=0) == pytest.approx(3350 / 16.06)
    # KV per token = 2 * 32 * 8 * 128 * 2 B = 131072 B; at 1024 tokens of context that adds 0.134 GB.
    assert 1 / decode_step_bound_s(shape, h100, 1, 1024) == pytest.approx(3350e9 / (16.06e9 + 131072 * 1024))
    # Prefill of 512 tokens: 2 * 8.03e9 * 512 / 989e12 = 8.31 ms.
    assert prefill_bound_s(shape, h100, 1, 512) == pytest.approx(2 * params * 512 / 989e12)


def test_every_hardware_yaml_loads_and_unknown_name_is_a_config_error():
    from importlib.resources import files

    for entry in (files("pipelines.conf") / "hardware").iterdir():
        if entry.name.endswith(".yaml"):
            assert load_hardware(entry.name.removesuffix(".yaml")).memory_bandwidth_gb_s > 0
    with pytest.raises(ConfigError, match="h100"):
        load_hardware("h10")


@pytest.mark.slow
def test_model_shape_counts_the_same_parameters_as_torch(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    shape = read_model_shape(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert (shape.layers, shape.kv_heads, shape.head_dim, shape.dtype) == (2, 2, 64, "float32")
    assert shape.kv_bytes_per_token == 2 * 2 * 2 * 64 * 4


def test_scenario_prompts_are_unique_ordinary_tokens_in_whole_batches(tiny_llama_dir):
    from pipelines.bench.scenarios import ordinary_token_ids, plan_levels
    from pipelines.models import load_tokenizer

    ids = ordinary_token_ids(load_tokenizer(tiny_llama_dir))
    bench = BenchConfig(name="t", input_tokens=8, batch_sizes=[1, 3], requests_per_level=4, warmup_requests=1,
                        repeats=2)
    plans = plan_levels(bench, ids)
    prompts = [tuple(p) for plan in plans for batches in [plan.warmup_batches, *plan.repeats]
               for batch in batches for p in batch]
    assert len(prompts) == len(set(prompts))
    assert {t for p in prompts for t in p} <= set(range(3, 512))
    assert all(len(p) == 8 for p in prompts)
    assert [plan.requests_per_repeat for plan in plans] == [4, 6]


@pytest.mark.slow
def test_hf_engine_yields_exactly_output_tokens_with_monotonic_timestamps(tiny_llama_dir):
    from pipelines.bench.engines.hf import HFEngine
    from pipelines.config import ModelConfig

    engine = HFEngine(tiny_llama_dir, ModelConfig(name="tiny", source=str(tiny_llama_dir), dtype="float32"))
    engine.reset_peak_memory()
    timings = engine.run_batch([[5, 6, 7, 8], [9, 10, 11, 12]], output_tokens=6)
    assert engine.peak_memory() > 0
    assert len(timings) == 2
    for t in timings:
        assert len(t.token_times_s) == 6
        assert np.all(np.diff([t.submit_s, *t.token_times_s]) > 0)


@pytest.mark.slow
def test_run_benchmark_measures_every_level_and_reuses_its_cache(tiny_llama_dir, tmp_path):
    from pipelines.bench import run_benchmark
    from pipelines.config import HardwareConfig, ModelConfig, PriceConfig, RunConfig
    from pipelines.records import Variant

    cfg = RunConfig(model=ModelConfig(name="tiny", source=str(tiny_llama_dir), dtype="float32"),
                    bench=BenchConfig(name="t", input_tokens=8, output_tokens=4, batch_sizes=[1, 2],
                                      requests_per_level=2, warmup_requests=1, repeats=2,
                                      slo=SLOConfig(ttft_p95_ms=1e6, itl_p95_ms=1e6)),
                    hardware=HardwareConfig(name="cpu-test", price_per_hour=PriceConfig(on_demand=1.0),
                                            memory_bandwidth_gb_s=20, memory_gb=24),
                    cache_dir=str(tmp_path))
    variant = Variant(name="none", base="tiny", backend="none", method="none", scheme=None,
                      checkpoint_dir=str(tiny_llama_dir), size_bytes=123, content_hash="abc", cache_key="k",
                      quantize_seconds=0.0, from_cache=False)
    first = run_benchmark(cfg, variant)
    assert [lv.batch_size for lv in first.levels] == [1, 2]
    assert [lv.requests for lv in first.levels] == [4, 4]
    assert first.knee_batch_size == 2 and not first.from_cache
    again = run_benchmark(cfg, variant)
    assert again.from_cache and again.levels == first.levels
    assert math.isclose(again.levels[0].output_tokens_per_s, first.levels[0].output_tokens_per_s)


@pytest.mark.parametrize("meter", ["KernelRssPeak", "SampledRssPeak"])
def test_cpu_peak_memory_sees_a_freed_allocation(meter):
    import time

    import psutil

    from pipelines.bench.engines import hf

    if meter == "KernelRssPeak" and not hf.KernelRssPeak.available():
        pytest.skip("no resettable kernel RSS peak on this system")
    rss = getattr(hf, meter)()
    rss.reset()
    baseline = psutil.Process().memory_info().rss
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page touched
    if meter == "SampledRssPeak":  # hold the block until the sampler thread has seen it, however busy the CPU
        deadline = time.monotonic() + 600  # a hang guard only
        while rss._peak < baseline + 60 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.01)
    del block
    assert psutil.Process().memory_info().rss < baseline + 32 * 2**20  # freed: only the peak remembers it
    # Kernel RSS counters are batched per thread (a few pages of slack): 60 of the 64 MiB must show.
    assert rss.peak() >= baseline + 60 * 2**20


def test_served_rate_levels_sharing_a_batch_size_give_one_knee_to_cost_report_and_mlflow(tmp_path):
    from pipelines.report import summary_rows
    from pipelines.track.keys import headline_metrics

    # Two rate levels both hold ~2 requests in flight; the knee is r4 (the higher rate), not r2.
    levels = [load_level(batch_size=2, load="r2", output_tokens_per_s=50.0, e2e_mean_ms=500.0),
              load_level(batch_size=2, load="r4", output_tokens_per_s=90.0, e2e_mean_ms=500.0)]
    outcome = make_outcome(tmp_path)
    outcome.bench = replace(outcome.bench, levels=levels, knee_batch_size=2, knee_load="r4")
    outcome.cost = estimate_cost(outcome.bench, load_hardware("cpu-2core"), BenchConfig(name="t"),
                                 ModelShape(5e6, 4, 4, 64, 20_000_000, "float32", "float32"))
    header, rows = summary_rows([outcome])
    assert outcome.bench.knee().load == outcome.bench.cost_level().load == "r4"
    assert outcome.cost.measured.output_tokens_per_s == 90.0
    assert rows[0][header.index("tok/s")] == "90.0"
    assert headline_metrics(outcome)["throughput/knee_tokens_per_s"] == 90.0


def test_without_a_knee_every_reader_takes_the_level_with_the_most_tokens_per_s():
    bench = bench_result([level(1, False, tokens_per_s=40), level(4, False, tokens_per_s=70)])
    assert bench.knee() is None and bench.cost_level().batch_size == 4
