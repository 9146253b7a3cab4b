"""Paired served benchmarking (pipelines/bench/paired.py `run_paired_served_benchmark`, and the
serve path of pipelines/pipeline.py) on a virtual clock: a level engine that answers from a load
schedule instead of an endpoint, and a server that serves nothing, so nothing depends on speed.

python -m pytest tests/test_paired_served.py -q
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import registry
from pipelines.bench import paired as paired_bench
from pipelines.bench.engines import LevelRun, MeasuredLevel, StreamTiming
from pipelines.cli import compose_all
from pipelines.config import load_group_config
from pipelines.cost import paired_cost_saving
from pipelines.gate import cost_rule, throughput_rule
from pipelines.records import CostEstimate, CostResult, ServedModel, Variant


class VirtualEndpoints:
    """One clock for both endpoints; each round (one run_round call) runs at the next slowdown."""

    def __init__(self, slowdowns: list[float]):
        self.now, self.slowdowns, self.log = 0.0, slowdowns, []

    def slowdown(self) -> float:
        return self.slowdowns[len(self.log) % len(self.slowdowns)]


class VirtualLevelEngine:
    """Sequential requests of `output_tokens` tokens, one token per `step_ms * streams * slowdown` ms;
    the variant's endpoint decodes twice as fast as the base's, whatever the load."""

    name, libraries, runs_levels, memory_kind = "virtual-served", ("numpy",), True, "not_measured_server_process"
    clock: VirtualEndpoints | None = None
    built: list[str] = []

    def __init__(self, served: ServedModel, cfg, step_ms: float = 1.0, **guidellm_params):
        self.role, self.bench = served.model, cfg.bench
        self.step_s = step_ms / 1000 * (0.5 if self.role == "variant" else 1.0)
        VirtualLevelEngine.built.append(self.role)

    @classmethod
    def check(cls, cfg) -> None:
        pass

    def run_round(self, out_dir: Path, repeat: int) -> LevelRun:
        slowdown = self.clock.slowdown()
        self.clock.log.append((self.role, repeat))
        count = self.bench.requests_per_level
        levels = [MeasuredLevel(load=f"c{streams}", streams=streams, rate_rps=None,
                                repeats=[[self._request(streams * slowdown) for _ in range(count)]])
                  for streams in self.bench.batch_sizes]
        report = out_dir / f"guidellm-r{repeat}.html"
        report.write_text("<html></html>")
        return LevelRun(levels=levels, reports=[report])

    def _request(self, slowdown: float) -> StreamTiming:
        tokens, submit = self.bench.output_tokens, self.clock.now
        first, last = submit + self.step_s * slowdown, submit + self.step_s * slowdown * tokens
        self.clock.now = last
        return StreamTiming(submit_s=submit, first_token_s=first, last_token_s=last, end_s=last, output_tokens=tokens,
                            chunks=tokens)

    def device_name(self) -> str:
        return "virtual clock"


@pytest.fixture
def cfg(monkeypatch, tmp_path):
    """Levels at 1 and 4 streams, 4 requests each, 3 rounds at 1x, 3x and 1.5x slowdown."""
    monkeypatch.setitem(registry.BENCH_ENGINES, "virtual-served", f"{__name__}:VirtualLevelEngine")
    VirtualLevelEngine.clock, VirtualLevelEngine.built = VirtualEndpoints([1.0, 1.0, 3.0, 3.0, 1.5, 1.5]), []
    return compose_all(["bench=served", "serve=endpoint", "bench.engine=virtual-served",
                        "bench.batch_sizes=[1,4]", "bench.requests_per_level=4", "bench.repeats=3",
                        "bench.output_tokens=8", f"cache_dir={tmp_path}/cache"])[0]


def variant(name: str, content_hash: str) -> Variant:
    return Variant(name=name, base="tiny", backend="x", method="x", scheme=None, checkpoint_dir=f"/ckpt/{name}",
                   size_bytes=1, content_hash=content_hash, cache_key="k", quantize_seconds=0.0, from_cache=False)


def served(role: str, dtype: str = "float32") -> ServedModel:
    return ServedModel(base_url=f"http://127.0.0.1:1/{role}/v1", model=role, tokenizer_dir="/ckpt", engine="vllm",
                       engine_version="0.32.0", engine_args={"dtype": dtype})


def run_pair(cfg, base_hash: str = "b1", dtype: str = "float32"):
    variants = {"base": variant("base", base_hash), "variant": variant("variant", "v1")}
    return paired_bench.run_paired_served_benchmark(cfg, variants, {role: served(role, dtype) for role in variants})


def test_rounds_alternate_the_two_endpoints(cfg):
    run_pair(cfg)
    assert VirtualLevelEngine.clock.log == [("base", 0), ("variant", 0), ("base", 1), ("variant", 1),
                                            ("base", 2), ("variant", 2)]


def test_both_records_share_one_pairing_id_and_the_ratio_holds_while_load_moves_the_figures(cfg):
    base_bench, bench = run_pair(cfg)
    assert bench.pairing_id == base_bench.pairing_id is not None
    rounds = base_bench.levels[0].repeat_output_tokens_per_s
    assert [r / rounds[0] for r in rounds] == pytest.approx([1.0, 1 / 3, 1 / 1.5])  # each round's own slowdown
    assert [ratio.load for ratio in bench.ratios] == ["c1", "c4"]
    tokens = bench.ratios[0].output_tokens_per_s
    assert (tokens.low, tokens.estimate, tokens.high) == pytest.approx((2.0, 2.0, 2.0))
    assert bench.ratios[0].ttft.estimate == pytest.approx(0.5) and bench.ratios[1].itl.estimate == pytest.approx(0.5)
    saving = paired_cost_saving(bench, base_bench, cfg.gate.confidence)  # 1 - 1/2 at every bound
    assert (saving.low, saving.estimate, saving.high) == pytest.approx((0.5, 0.5, 0.5))


def test_the_gate_decides_served_cost_and_throughput_on_the_paired_interval(cfg):
    base_bench, bench = run_pair(cfg)
    policy = dataclasses.replace(load_group_config("gate", "strict"), min_throughput_gain=0.5)
    estimate = CostEstimate(hardware="cpu", basis="measured", price_per_hour=1.0, output_tokens_per_s=1.0,
                            usd_per_million_output_tokens=1.0, replicas_for_target=1, monthly_usd=1.0)
    costs = [CostResult(variant=v, target_qps=1.0, headroom=0.2, measured=estimate, projected=[],
                        decode_roofline_fraction=None) for v in ("variant", "base")]
    assert cost_rule(policy, *costs, bench, base_bench).status == "PASS"  # saving [0.5, 0.5] >= 0.10
    gain = throughput_rule(policy, bench, base_bench)  # 2x at one stream: gain [1.0, 1.0] >= 0.5
    assert gain.status == "PASS" and gain.observed == pytest.approx(1.0)


def test_each_record_lists_its_own_endpoints_reports_in_the_pair_directory(cfg):
    base_bench, bench = run_pair(cfg)
    for role, result in (("base", base_bench), ("variant", bench)):
        assert len(result.reports) == 3 and all(Path(p).is_file() and f"/{role}/" in p for p in result.reports)
        assert Path(result.reports[0]).parent.parent.name.startswith("pair-base-variant-")


def test_a_cached_pair_is_reused_whole_and_another_base_or_server_re_times_both(cfg):
    first = run_pair(cfg)
    again = run_pair(cfg)
    assert VirtualLevelEngine.built == ["base", "variant"] and all(result.from_cache for result in again)
    assert again[1].pairing_id == first[1].pairing_id and again[1].ratios
    other_base = run_pair(cfg, base_hash="b2")
    other_server = run_pair(cfg, dtype="bfloat16")
    assert VirtualLevelEngine.built == ["base", "variant"] * 3
    assert len({first[1].pairing_id, other_base[1].pairing_id, other_server[1].pairing_id}) == 3


def test_the_base_against_itself_is_one_unpaired_served_benchmark(cfg, monkeypatch):
    ran = []
    monkeypatch.setattr(paired_bench, "run_benchmark", lambda cfg, v, s: ran.append((v.name, s.model)) or "result")
    variants = {"base": variant("none", "b1"), "variant": variant("none", "b1")}
    assert paired_bench.run_paired_served_benchmark(cfg, variants, {r: served(r) for r in variants}) == ("result",
                                                                                                         "result")
    assert ran == [("none", "variant")]


class TwoEndpoints:
    """A serve backend that serves nothing and logs when each role's server starts and stops."""

    def __init__(self, log: list):
        self.log = log

    @contextlib.contextmanager
    def serve(self, variant, role, output_dir):
        self.log.append(f"start {role}")
        try:
            yield served(role)
        finally:
            self.log.append(f"stop {role}")


def test_the_pipeline_scores_each_server_then_times_both_while_both_are_up(cfg, monkeypatch, tmp_path):
    from pipelines import pipeline
    from pipelines.evaluate import agreement
    from pipelines.stage_log import StageLog

    log = []
    monkeypatch.setattr("pipelines.serve.make_server", lambda cfg: TwoEndpoints(log))
    monkeypatch.setattr("pipelines.evaluate.run_evaluate", lambda cfg, v, s: log.append(f"score {s.model}") or
                        SimpleNamespace(agreement=[]))
    monkeypatch.setattr(agreement, "served_agreement", lambda cfg, v, result, role: log.append(f"agree {role}") or [])
    timed = (SimpleNamespace(from_cache=False), SimpleNamespace(from_cache=False))
    monkeypatch.setattr(paired_bench, "run_paired_served_benchmark",
                        lambda cfg, variants, endpoints: log.append(f"bench {sorted(endpoints)}") or timed)
    run = StageLog()
    variants = {"base": variant("base", "b1"), "variant": variant("variant", "v1")}
    assert pipeline._serve_and_measure(cfg, variants, tmp_path, run)[2:] == timed
    assert log == ["start base", "score base", "start variant", "score variant", "bench ['base', 'variant']",
                   "stop variant", "stop base", "agree base", f"agree {cfg.quant.name}"]
    assert [stage.stage for stage in run.times] == ["serve base", "serve variant", "benchmark", "agreement"]


def test_a_failure_while_the_variant_is_scored_stops_both_servers(cfg, monkeypatch, tmp_path):
    from pipelines import pipeline
    from pipelines.stage_log import StageLog

    def score(cfg, variant, endpoint):
        if endpoint.model == "variant":
            raise RuntimeError("HTTP 500 from the variant's server")
        return SimpleNamespace(agreement=[])

    log = []
    monkeypatch.setattr("pipelines.serve.make_server", lambda cfg: TwoEndpoints(log))
    monkeypatch.setattr("pipelines.evaluate.run_evaluate", score)
    run = StageLog()
    with pytest.raises(RuntimeError, match="HTTP 500"):
        pipeline._serve_and_measure(cfg, {"base": variant("base", "b1"), "variant": variant("variant", "v1")},
                                    tmp_path, run)
    assert log == ["start base", "start variant", "stop variant", "stop base"] and run.failed == "serve variant"
