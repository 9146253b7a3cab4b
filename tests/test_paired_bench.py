"""Paired benchmarking (pipelines/bench/paired.py) and run conditions (pipelines/bench/conditions.py)
on a virtual clock: the machine's load is a schedule, not the real machine, so nothing depends on speed.

nice -n 10 python -m pytest tests/test_paired_bench.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import registry
from pipelines.bench import paired as paired_bench
from pipelines.bench.conditions import Snapshot, conditions, cpu_times_from_stat
from pipelines.bench.engines import RequestTiming
from pipelines.bench.scenarios import plan_levels
from pipelines.cli import compose_all
from pipelines.records import Variant

from conftest import load_level


class VirtualMachine:
    """A shared clock whose slowdown changes with every round (a CPU hog that comes and goes)."""

    def __init__(self, slowdowns: list[float], calls_per_round: int):
        self.now, self.calls, self.log = 0.0, 0, []
        self.slowdowns, self.calls_per_round = slowdowns, calls_per_round

    def slowdown(self) -> float:
        return self.slowdowns[(self.calls // self.calls_per_round) % len(self.slowdowns)]


class VirtualEngine:
    """Each decode step of a batch of B takes step_ms * B * (the machine's slowdown) ms."""

    name, libraries, runs_levels, memory_kind = "virtual", ("numpy",), False, "none"
    machine: VirtualMachine | None = None
    built: list[str] = []

    def __init__(self, checkpoint_dir, model, device="cpu", step_ms=1.0):
        self.role = "variant" if "variant" in str(checkpoint_dir) else "base"
        # The variant decodes twice as fast as the base, whatever the load.
        self.step_s = step_ms / 1000 * (0.5 if self.role == "variant" else 1.0)
        VirtualEngine.built.append(self.role)

    def run_batch(self, prompts, output_tokens):
        machine = self.machine
        step = self.step_s * len(prompts) * machine.slowdown()
        submit = machine.now
        times = [submit + step * (i + 1) for i in range(output_tokens)]
        machine.now, machine.calls = times[-1], machine.calls + 1
        machine.log.append((self.role, len(prompts)))
        return [RequestTiming(submit_s=submit, token_times_s=list(times)) for _ in prompts]

    def reset_peak_memory(self):
        pass

    def peak_memory(self):
        return 0

    def device_name(self):
        return "virtual clock"


@pytest.fixture
def virtual(monkeypatch, tmp_path):
    """A config timing on VirtualEngine: 2 levels (batch 1 and 4), 4 requests each, 3 rounds, no warm-up."""
    monkeypatch.setitem(registry.BENCH_ENGINES, "virtual", f"{__name__}:VirtualEngine")
    cfg = compose_all(["bench=cpu", "bench.engine=virtual", "bench.batch_sizes=[1,4]", "bench.requests_per_level=4",
                       "bench.warmup_requests=0", "bench.repeats=3", f"cache_dir={tmp_path}/cache"])[0]
    # Prompts from 100 synthetic token ids: no tokenizer to load.
    monkeypatch.setattr(paired_bench, "plan_prompts", lambda cfg, variant: plan_levels(cfg.bench, np.arange(100)))
    # Every round is 2 levels x 2 roles; rounds run at 1x, 3x and 1.5x slowdown.
    VirtualEngine.machine = VirtualMachine([1.0, 3.0, 1.5], calls_per_round=2 * (4 + 1))
    VirtualEngine.built = []
    return cfg


def variant(name: str, content_hash: str) -> Variant:
    return Variant(name=name, base="tiny", backend="x", method="x", scheme=None, checkpoint_dir=f"/ckpt/{name}",
                   size_bytes=1, content_hash=content_hash, cache_key="k", quantize_seconds=0.0, from_cache=False)


def test_rounds_alternate_base_and_variant_at_every_level(virtual):
    paired_bench.run_paired_benchmark(virtual, variant("base", "b1"), variant("variant", "v1"))
    log = VirtualEngine.machine.log
    # One round: level 1 (4 batches of 1) base then variant, level 4 (1 batch of 4) base then variant.
    one_round = [("base", 1)] * 4 + [("variant", 1)] * 4 + [("base", 4), ("variant", 4)]
    assert log == one_round * 3


def test_the_paired_ratio_holds_while_load_moves_the_absolute_figures_threefold(virtual):
    base_bench, bench = paired_bench.run_paired_benchmark(virtual, variant("base", "b1"), variant("variant", "v1"))
    base_rounds = base_bench.levels[0].repeat_output_tokens_per_s
    assert max(base_rounds) / min(base_rounds) == pytest.approx(3.0)  # what unpaired figures would swing by
    ratio = bench.ratios[0].output_tokens_per_s
    assert (ratio.low, ratio.estimate, ratio.high) == pytest.approx((2.0, 2.0, 2.0))
    assert bench.ratios[0].itl.estimate == pytest.approx(0.5) and ratio.confidence == virtual.gate.confidence
    assert bench.pairing_id == base_bench.pairing_id is not None


def test_a_cached_pair_is_reused_whole_and_a_new_base_re_times_both(virtual):
    first = paired_bench.run_paired_benchmark(virtual, variant("base", "b1"), variant("variant", "v1"))
    assert VirtualEngine.built == ["base", "variant"]
    again = paired_bench.run_paired_benchmark(virtual, variant("base", "b1"), variant("variant", "v1"))
    assert VirtualEngine.built == ["base", "variant"] and all(result.from_cache for result in again)
    assert again[1].pairing_id == again[0].pairing_id == first[1].pairing_id and again[1].ratios
    # Same variant checkpoint, another base: its cached timing is not reused, both are timed anew.
    other = paired_bench.run_paired_benchmark(virtual, variant("base", "b2"), variant("variant", "v1"))
    assert VirtualEngine.built == ["base", "variant"] * 2 and not other[1].from_cache
    assert other[1].pairing_id == other[0].pairing_id != first[1].pairing_id


def test_pair_key_changes_with_either_checkpoint_and_the_bench_settings(virtual):
    def key(base_hash, variant_hash, cfg=virtual):
        return paired_bench.pair_key(cfg, variant("base", base_hash), variant("variant", variant_hash), {})

    more_rounds = compose_all(["bench=cpu", "bench.engine=virtual", "bench.repeats=5"])[0]
    assert len({key("b1", "v1"), key("b2", "v1"), key("b1", "v2"), key("b1", "v1", more_rounds)}) == 4


def test_the_base_against_itself_is_one_unpaired_benchmark(virtual, monkeypatch):
    ran = []
    monkeypatch.setattr(paired_bench, "run_benchmark", lambda cfg, v: ran.append(v.name) or "result")
    assert paired_bench.run_paired_benchmark(virtual, variant("none", "b1"), variant("none", "b1")) == ("result",
                                                                                                        "result")
    assert ran == ["none"]


STAT = "cpu  45698 1777 7261 85717 834 0 156 75 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"


def test_steal_and_total_come_from_the_aggregate_cpu_line_of_proc_stat():
    assert cpu_times_from_stat(STAT) == (75, 45698 + 1777 + 7261 + 85717 + 834 + 0 + 156 + 75)


def snap(load: float, steal: int, total: int) -> Snapshot:
    return Snapshot(load_avg=(load, load, load), cpu_times=(steal, total), gpus=[])


@pytest.mark.parametrize("load, steal, rounds, warned", [
    (0.4, 0, [100.0, 101.0, 99.0], []),
    (1.5, 0, [100.0, 101.0, 99.0], ["background load: load average 1.50 on 2 CPUs"]),
    (0.4, 100, [100.0, 101.0, 99.0], ["CPU steal 10% during the run"]),
    (0.4, 0, [100.0, 60.0, 99.0], ["repeats spread: tokens/s CV 26% at batch 1"]),
])
def test_conditions_warn_on_background_load_steal_and_spread(load, steal, rounds, warned):
    found = conditions(snap(load, 0, 1000), snap(9.0, steal, 2000), [load_level(repeat_output_tokens_per_s=rounds)],
                       cpus=2)
    assert [w[:len(expected)] for w, expected in zip(found.warnings, warned)] == warned
    assert len(found.warnings) == len(warned) and found.load_avg_after == [9.0, 9.0, 9.0]
    assert found.max_tokens_per_s_cv == pytest.approx(np.std(rounds, ddof=1) / np.mean(rounds))


def test_records_of_different_bench_runs_give_no_ratio_and_no_saving(virtual):
    from pipelines.cost import paired_cost_saving
    from pipelines.ratios import level_ratios

    base_bench, bench = paired_bench.run_paired_benchmark(virtual, variant("base", "b1"), variant("variant", "v1"))
    other_base, _ = paired_bench.run_paired_benchmark(virtual, variant("base", "b2"), variant("variant", "v1"))
    assert level_ratios(bench, base_bench, 0.95) and paired_cost_saving(bench, base_bench, 0.95) is not None
    assert level_ratios(bench, other_base, 0.95) == [] and paired_cost_saving(bench, other_base, 0.95) is None


def test_gpu_processes_and_utilisation_come_from_nvidia_smi_where_there_is_one(tmp_path, monkeypatch):
    from pipelines.bench.conditions import gpu_status

    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$1" in\n  --query-gpu*) echo "NVIDIA H200, 87 %, 70000 MiB, 143771 MiB";;\n'
                    '  *) echo "4242, python, 69000 MiB";;\nesac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_status() == ["NVIDIA H200, 87 %, 70000 MiB, 143771 MiB", "4242, python, 69000 MiB"]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_status() == []


def test_a_tampered_cached_pair_is_timed_again(virtual):
    paired_bench.run_paired_benchmark(virtual, variant("base", "b1"), variant("variant", "v1"))
    bench_cache = Path(virtual.cache_dir) / "bench"
    entry = next(bench_cache.glob("pair-*/variant-*"))
    entry.write_text(entry.read_text().replace('"variant"', '"tampered"', 1))
    again = paired_bench.run_paired_benchmark(virtual, variant("base", "b1"), variant("variant", "v1"))
    assert VirtualEngine.built == ["base", "variant"] * 2 and not again[1].from_cache
    assert any(bench_cache.glob("pair-*.corrupt-*"))
