"""The served bench (engine openai, GuideLLM against an endpoint): metric math on hand-worked
per-request data, config checks, and runs against GuideLLM's own mock OpenAI server and (when its
environment is set up) a real vLLM server started through the serve seam.

    pytest tests/test_bench_served.py                 # metric math and checks: seconds
    pytest tests/test_bench_served.py -m slow         # mock server and vLLM: minutes
"""

from __future__ import annotations

import http.server
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.bench.engines import MeasuredLevel, RequestTiming, StreamTiming
from pipelines.bench.measure import LevelFailed, knee_level, summarize_level, summarize_served_level
from pipelines.config import SLOConfig
from pipelines.errors import ConfigError
from pipelines.records import BenchResult, LoadLevel, ServedModel, Variant
from pipelines.serve.process import free_port

from conftest import load_level

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "pipelines" / "embedded" / "tiny-llama"
VLLM_PYTHON = Path(os.environ.get("QUANTGATE_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))

# Two requests of 4 output tokens, worked by hand (seconds):
#   r1: TTFT 0.10, E2E 0.41, TPOT (0.41-0.10)/3 = 0.10333, 4 chunks -> ITL (0.40-0.10)/3 = 0.100
#   r2: TTFT 0.25, E2E 0.85, TPOT (0.85-0.25)/3 = 0.200,   2 chunks -> ITL (0.90-0.30)/1 = 0.600
R1 = StreamTiming(submit_s=0.0, first_token_s=0.10, last_token_s=0.40, end_s=0.41, output_tokens=4, chunks=4)
R2 = StreamTiming(submit_s=0.05, first_token_s=0.30, last_token_s=0.90, end_s=0.90, output_tokens=4, chunks=2)
WALL = 0.90  # first submit 0.0 to last end 0.90


def served_level(load="c2", streams=2, rate=None, repeats=None, **counts) -> MeasuredLevel:
    return MeasuredLevel(load=load, streams=streams, rate_rps=rate, repeats=repeats or [[R1, R2]], **counts)


def test_served_level_metrics_match_the_hand_worked_requests():
    level = summarize_served_level(served_level(), SLOConfig(ttft_p95_ms=200, itl_p95_ms=150))
    assert level.requests == 2 and level.load == "c2" and level.batch_size == 2
    assert level.output_tokens_per_s == pytest.approx(8 / WALL)
    assert level.requests_per_s == pytest.approx(2 / WALL)
    # Only r1 meets both targets (r2: TTFT 250 > 200 and ITL 600 > 150).
    assert level.goodput_rps == pytest.approx(1 / WALL)
    assert level.tpot_ms.p50 == pytest.approx((103.333333 + 200) / 2)
    assert level.ttft_ms.p50 == pytest.approx(175) and level.e2e_ms.p50 == pytest.approx(630)
    assert level.itl_ms.p50 == pytest.approx(350) and level.itl_mean_ms == pytest.approx(350)
    # Pooled p95 TTFT = 100 + 0.95 * 150 = 242.5 ms > 200: the level misses the SLO.
    assert level.ttft_ms.p95 == pytest.approx(242.5) and not level.meets_slo


def test_tpot_excludes_the_first_token_on_in_process_levels_too():
    timing = RequestTiming(submit_s=0.0, token_times_s=[0.5, 0.6, 0.8])  # TPOT (0.8 - 0.5) / 2 = 150 ms
    level = summarize_level(1, [[timing]], SLOConfig())
    assert level.tpot_ms.p50 == pytest.approx(150)


def test_a_rate_level_sits_at_its_measured_requests_in_flight():
    # Little's law: (0.41 + 0.85) s of requests over 0.90 s of wall time = 1.4 in flight -> 2.
    level = summarize_served_level(served_level(load="r2", streams=None, rate=2.0), SLOConfig())
    assert level.batch_size == 2 and level.rate_rps == 2.0


def test_a_request_with_one_chunk_has_no_itl_and_misses_an_itl_target():
    burst = StreamTiming(submit_s=0.0, first_token_s=0.1, last_token_s=0.1, end_s=0.1, output_tokens=4, chunks=1)
    level = summarize_served_level(served_level(repeats=[[burst]]), SLOConfig(itl_p95_ms=1000))
    assert math.isnan(level.itl_ms.p95) and level.goodput_rps == 0 and not level.meets_slo
    assert level.tpot_ms.p50 == pytest.approx(0)


def test_an_all_errored_level_fails_in_one_line_with_the_servers_reason():
    level = served_level(repeats=[[]], errored=32, first_error="HTTP 500: out of KV cache")
    with pytest.raises(LevelFailed, match=r"c2: none of its requests succeeded \(32 errored.*out of KV cache"):
        summarize_served_level(level, SLOConfig())


def test_errors_are_counted_next_to_the_successful_requests():
    level = summarize_served_level(served_level(errored=3, incomplete=1), SLOConfig())
    assert (level.errored_requests, level.incomplete_requests, level.requests) == (3, 1, 2)


def test_a_level_guidellm_kept_fewer_requests_of_is_named():
    from pipelines.bench.engines.openai import short_levels

    full = served_level(errored=3, incomplete=1)  # 2 successful + 3 errored + 1 incomplete: all 6 asked
    short = MeasuredLevel(load="c4", streams=4, rate_rps=None, repeats=[full.repeats[0][:1]])
    assert short_levels([full, short], asked=6) == [("c4", 1, 6)]


def _level(load: str, batch_size: int, meets: bool, rps: float = 1.0, tokens_per_s: float = 10.0) -> LoadLevel:
    return load_level(batch_size=batch_size, repeats=1, output_tokens_per_s=tokens_per_s, requests_per_s=rps,
                      goodput_rps=rps, meets_slo=meets, e2e_mean_ms=1000.0, load=load)


def test_the_knee_is_the_highest_load_meeting_the_slo():
    levels = [_level("c1", 1, True), _level("c4", 4, True), _level("c8", 8, False), _level("c16", 16, False)]
    assert knee_level(levels).load == "c4"
    assert knee_level([_level("c1", 1, False)]) is None
    # Two rate levels at the same requests in flight: the one serving more requests/s is the higher load.
    assert knee_level([_level("r2", 3, True, rps=2.0), _level("r3", 3, True, rps=3.0)]).load == "r3"


def test_cost_is_taken_at_the_knee_level_even_when_loads_share_a_batch_size():
    from pipelines.cost import measured_estimate
    from pipelines.pipeline import compose_config

    cfg = compose_config([])
    levels = [_level("r2", 3, True, rps=2.0, tokens_per_s=50.0), _level("r3", 3, True, rps=3.0, tokens_per_s=80.0)]
    bench = BenchResult(variant="v", engine="openai", device="cpu", levels=levels, knee_batch_size=3, knee_load="r3",
                        peak_memory_bytes=None, memory_kind="not_measured_server_process", checkpoint_bytes=1)
    assert measured_estimate(bench, cfg.hardware, cfg.bench).output_tokens_per_s == 80.0


# --- config checks (preflight), no endpoint contacted ---------------------------------------------------------

def compose(*overrides: str):
    from pipelines.pipeline import compose_config

    return compose_config(["bench=served", "serve=endpoint", "tracking.enabled=false", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["serve=inprocess"], "benchmarks a served endpoint; add serve=vllm or serve=endpoint"),
    (["bench.params.profile=ramp"], "bench.params.profile=ramp must be one of"),
    (["bench.params.profile=poisson"], "needs bench.params.rates"),
    (["bench.params.profile=knee", "bench.batch_sizes=[1,2,4]"], ">= 5 distinct increasing"),
    (["bench.params.profile=sweep", "bench.repeats=2"], "set bench.repeats=1"),
    (["+bench.params.streams=4"], r"bench.params \['streams'\] are not options of the openai engine"),
])
def test_check_rejects_configs_the_served_engine_cannot_run(overrides, message):
    from pipelines.bench import check_bench

    with pytest.raises(ConfigError, match=message):
        check_bench(compose(*overrides))


def test_served_config_maps_onto_a_valid_guidellm_scenario_with_one_level_per_stream_count(tmp_path):
    from guidellm.schemas.benchmark import BenchmarkScenario

    from pipelines.bench.engines.openai import GuideLLMEngine

    cfg = compose("bench.batch_sizes=[1,4]", "bench.requests_per_level=32", "bench.warmup_requests=4")
    served = ServedModel(base_url="http://127.0.0.1:1/v1", model="m", tokenizer_dir=str(EMBEDDED), engine="vllm",
                         engine_version="0.32.0")
    scenario = BenchmarkScenario.model_validate(GuideLLMEngine(served, cfg).scenario({"html": tmp_path / "r.html"}))
    benchmarks = scenario.get_benchmarks()
    assert [b.profile.streams for b in benchmarks] == [[1], [4]]
    spec = benchmarks[0]
    assert spec.backend.target == "http://127.0.0.1:1" and spec.backend.request_format == "/v1/completions"
    assert spec.data[0].output_tokens == cfg.bench.output_tokens
    assert spec.constraints[0].count == 32 + 4  # measured and warm-up requests


def test_cache_key_follows_the_serving_engine_not_its_port():
    from pipelines.bench import bench_key

    cfg = compose()
    variant = Variant(name="v", base="b", backend="none", method="none", scheme=None, checkpoint_dir="x", size_bytes=1,
                      content_hash="h", cache_key="k", quantize_seconds=0.0, from_cache=False)

    def served(port: int, dtype: str) -> ServedModel:
        return ServedModel(base_url=f"http://127.0.0.1:{port}/v1", model="m", tokenizer_dir="x", engine="vllm",
                           engine_version="0.32.0", engine_args={"dtype": dtype, "port": port})

    key = bench_key(cfg, variant, {}, served(8000, "float32"))
    assert bench_key(cfg, variant, {}, served(9000, "float32")) == key
    assert bench_key(cfg, variant, {}, served(8000, "bfloat16")) != key


# --- against servers --------------------------------------------------------------------------------------------

@pytest.fixture
def mock_server():
    """GuideLLM's own mock OpenAI server: streams exactly max_tokens tokens, 5 ms TTFT, 2 ms apart.
    (Its own tokenizer: loading ours with --processor fails under transformers 5.)"""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "guidellm", "mock-server", "--host", "127.0.0.1",
                                "--port", str(port), "--model", "tiny", "--ttft-ms", "5", "--itl-ms", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a hang guard, generous for a busy machine
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("GuideLLM mock server did not answer /health in 120 s")
        yield ServedModel(base_url=f"http://127.0.0.1:{port}/v1", model="tiny", tokenizer_dir=str(EMBEDDED),
                          engine="guidellm-mock", engine_version="0.8.1")
    finally:
        process.terminate()
        process.wait(timeout=30)


def embedded_variant() -> Variant:
    return Variant(name="base", base="tiny-llama", backend="none", method="none", scheme=None,
                   checkpoint_dir=str(EMBEDDED), size_bytes=1, content_hash="embedded", cache_key="k",
                   quantize_seconds=0.0, from_cache=False)


@pytest.mark.slow
def test_guidellm_measures_each_level_against_an_openai_server_and_keeps_its_reports(mock_server, tmp_path):
    from pipelines.bench import run_benchmark

    cfg = compose(f"cache_dir={tmp_path}", "bench.batch_sizes=[1,2]", "bench.requests_per_level=6",
                  "bench.warmup_requests=1", "bench.output_tokens=8", "bench.input_tokens=16",
                  "bench.slo.ttft_p95_ms=60000", "bench.slo.itl_p95_ms=60000")
    # A loguru sink GuideLLM cannot pickle into its workers, as llm-compressor leaves after quantizing.
    from loguru import logger

    with (tmp_path / "other-library.log").open("w") as stream:
        sink = logger.add(stream)
        try:
            result = run_benchmark(cfg, embedded_variant(), mock_server)
        finally:
            logger.remove(sink)
    assert [level.load for level in result.levels] == ["c1", "c2"]
    for level in result.levels:
        assert level.requests == 6 and level.errored_requests == 0
        # The mock sleeps 5 ms before the first token and 2 ms between tokens: lower bounds, not speeds.
        assert level.ttft_ms.p50 >= 5 and level.tpot_ms.p50 >= 2
        assert level.output_tokens_per_s == pytest.approx(8 * level.requests_per_s)  # exactly 8 tokens each
    assert result.knee_load == "c2" and result.server["engine"] == "guidellm-mock"
    html = [Path(p) for p in result.reports if p.endswith(".html")]
    assert html and html[0].stat().st_size > 10_000 and "<html" in html[0].read_text()[:2000].lower()
    assert run_benchmark(cfg, embedded_variant(), mock_server).from_cache


class FailingCompletions(http.server.BaseHTTPRequestHandler):
    """A server that is healthy but answers every completion with HTTP 500."""

    def do_GET(self):
        body = b'{"object": "list", "data": [{"id": "tiny", "object": "model"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_error(500, "out of KV cache blocks")

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_a_level_where_every_request_errors_fails_the_benchmark(tmp_path):
    from pipelines.bench import run_benchmark

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = ServedModel(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="tiny",
                             tokenizer_dir=str(EMBEDDED), engine="stub", engine_version="0")
        cfg = compose(f"cache_dir={tmp_path}", "bench.batch_sizes=[1]", "bench.requests_per_level=4",
                      "bench.warmup_requests=0", "bench.output_tokens=4", "bench.input_tokens=16")
        with pytest.raises(LevelFailed, match=r"c1: none of its requests succeeded \(4 errored.*500 out of KV cache"):
            run_benchmark(cfg, embedded_variant(), served)
        assert not list((tmp_path / "bench").glob("base-*/bench.json"))  # nothing cached as a result
    finally:
        server.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not os.access(VLLM_PYTHON, os.X_OK),
                    reason=f"vLLM environment absent ({VLLM_PYTHON}); set it up with "
                           "`python -m pipelines.serve.install_vllm` or set QUANTGATE_VLLM_PYTHON")
def test_vllm_served_through_the_seam_is_benchmarked_at_two_load_levels(tmp_path):
    from pipelines.bench import run_benchmark
    from pipelines.pipeline import compose_config
    from pipelines.serve import make_server

    cfg = compose_config(["serve=vllm", f"serve.python={VLLM_PYTHON}", "bench=served", "tracking.enabled=false",
                          f"cache_dir={tmp_path}", "bench.batch_sizes=[1,4]", "bench.requests_per_level=8",
                          "bench.warmup_requests=1", "bench.output_tokens=8", "bench.input_tokens=32"])
    with make_server(cfg).serve(embedded_variant(), "base", tmp_path / "run") as served:
        result = run_benchmark(cfg, embedded_variant(), served)
    assert [level.load for level in result.levels] == ["c1", "c4"]
    for level in result.levels:
        # GuideLLM 0.8.1 at 4 streams on a busy machine once kept 4 of its 9 requests (1 warm-up + 3,
        # none errored or incomplete): how many it keeps depends on timing, so the count is bounded, not exact.
        assert 1 <= level.requests <= 8 and level.errored_requests == 0 and level.output_tokens_per_s > 0
        assert level.output_tokens_per_s == pytest.approx(8 * level.requests_per_s)  # ignore_eos: exactly 8 each
    assert result.server["engine"] == "vllm" and result.versions["guidellm"] == "0.8.1"
    assert any(p.endswith(".html") and Path(p).is_file() for p in result.reports)
