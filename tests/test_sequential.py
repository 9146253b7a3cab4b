"""Sequential evaluation (pipelines/evaluate/sequential.py): stopping, determinism, per-item cache, records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.evaluate.sequential import (DECIDED, EXHAUSTED, SETTLED, TaskMonitor, TaskPlan, _stop, check,
                                          final_confidence, looks_alpha)


@pytest.fixture(scope="module")
def sequential_cfg():
    from pipelines.pipeline import compose_config

    return compose_config(["eval.sequential=true", "tracking=off", "bench=off"])


def items(scores):
    return [{"score": float(s), "choice_loglikelihoods": None} for s in scores]


def run_looks(cfg, plans, pairs, chunk=50):
    """Feed each task's (base scores, variant scores) look by look until every task stopped."""
    monitors = {task: TaskMonitor(cfg, "generate_until") for task in plans}
    while active := [t for t, p in plans.items() if p.stop_reason is None]:
        for task in active:
            ids = [d for unit in plans[task].next_chunk(chunk) for d in unit]
            base, variant = pairs[task]
            monitors[task].update([(items([base[d]]), items([variant[d]])) for d in ids])
        _stop(plans, monitors, active)
    return monitors


def test_no_flip_task_passes_at_the_look_the_sequence_allows(sequential_cfg):
    """Without a flip the drop's sequence, at alpha_looks = 0.025 (half of 1 - 0.95), clears a 2-point
    tolerance after 289 items (the direct capital of test_confidence_sequence.py at alpha 0.025):
    with looks every 50 items, at look 6, 300 items."""
    plans = {"t": TaskPlan("t", [[d] for d in range(600)], clustered=False)}
    monitors = run_looks(sequential_cfg, plans, {"t": ([1] * 600, [1] * 600)})
    assert plans["t"].stop_reason == DECIDED
    assert (monitors["t"].looks, monitors["t"].items) == (6, 300)
    record = monitors["t"].record("t", 600, plans["t"].stop_reason)
    assert record.drop_high < 0.02 and record.flip_high < 0.10 and record.items_used == 300


def test_a_blocking_fail_settles_every_task(sequential_cfg):
    plans = {name: TaskPlan(name, [[d] for d in range(600)], clustered=False) for name in ("broken", "fine")}
    pairs = {"broken": ([1] * 600, [0] * 600), "fine": ([1] * 600, [1] * 600)}
    monitors = run_looks(sequential_cfg, plans, pairs)
    assert plans["broken"].stop_reason == DECIDED
    assert plans["fine"].stop_reason.startswith(SETTLED) and "accuracy[broken]" in plans["fine"].stop_reason
    assert monitors["broken"].items == monitors["fine"].items < 300


def test_undecided_task_runs_to_the_end_of_its_items(sequential_cfg):
    """Drop exactly at the tolerance: nothing decides within 100 items."""
    base, variant = [1] * 100, [1] * 98 + [0, 0]
    plans = {"t": TaskPlan("t", [[d] for d in range(100)], clustered=False)}
    monitors = run_looks(sequential_cfg, plans, {"t": (base, variant)}, chunk=30)
    assert plans["t"].stop_reason == EXHAUSTED
    assert (monitors["t"].items, monitors["t"].looks) == (100, 4)


def test_order_is_seeded_and_clusters_stay_whole(sequential_cfg):
    import dataclasses

    from pipelines.evaluate.sequential import plan_tasks
    from pipelines.evaluate.suites import resolve_include_path, task_manager

    manager = task_manager(sequential_cfg.eval.tasks, resolve_include_path("embedded"))
    first, again = plan_tasks(sequential_cfg, manager), plan_tasks(sequential_cfg, manager)
    other = plan_tasks(dataclasses.replace(sequential_cfg, eval=dataclasses.replace(sequential_cfg.eval, seed=7)),
                       manager)
    assert first.keys() == {"qg_invoice_total", "qg_policy_route", "qg_policy_route_gen", "qg_vendor_facts"}
    assert all(first[t].units == again[t].units for t in first)
    assert first["qg_invoice_total"].units != other["qg_invoice_total"].units
    assert sorted(d for unit in first["qg_invoice_total"].units for d in unit) == list(range(600))
    vendors = first["qg_vendor_facts"]
    assert vendors.clustered and all(len(unit) > 1 for unit in vendors.units) and vendors.available == 600


def test_check_refuses_what_sequential_cannot_do(sequential_cfg):
    import dataclasses

    from pipelines.config import SuiteTolerance

    relative = dataclasses.replace(sequential_cfg, gate=dataclasses.replace(
        sequential_cfg.gate, tolerance=SuiteTolerance(max_drop=0.05, kind="relative")))
    with pytest.raises(ConfigError, match="absolute"):
        check(relative)
    served = dataclasses.replace(sequential_cfg, serve=dataclasses.replace(sequential_cfg.serve, backend="endpoint"))
    with pytest.raises(ConfigError, match="in-process"):
        check(served)


def used_ids(cache: Path, task: str) -> list[int]:
    results = sorted((cache / "evals").glob("*/sequential/*/eval_result.json"))
    path = Path(json.loads(results[0].read_text())["tasks"][0]["items_path"]).parent / f"{task}.jsonl"
    return [json.loads(line)["doc_id"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_sequential_run_records_its_stop_and_reuses_items(tmp_path, tiny_llama_dir):
    from pipelines.pipeline import compose_config, run_variant

    def run(limit: int, name: str):
        cfg = compose_config(["quant=fp8", "tracking=off", "bench=off", f"model.source={tiny_llama_dir}",
                              "eval.sequential=true", "eval.chunk_size=8", f"eval.limit={limit}",
                              "eval.reference_max_tokens=256", f"cache_dir={tmp_path / 'cache'}"])
        outcome = run_variant(cfg, output_dir=tmp_path / name)
        return outcome, json.loads((tmp_path / name / "summary.json").read_text())

    outcome, summary = run(24, "first")
    assert outcome.error is None, outcome.error
    stops = {s["task"]: s for s in summary["sequential"]}
    assert set(stops) == {t.task for t in outcome.fidelity.tasks}
    for task in outcome.fidelity.tasks:
        record = stops[task.task]
        assert record["items_available"] == 24 and task.n == record["items_used"] <= 24
        assert record["stop_reason"].split(":")[0] in (DECIDED, SETTLED, EXHAUSTED)
        final_look = record["stop_reason"] == EXHAUSTED  # decided by the fixed-n interval at alpha_final
        assert task.ci_method.endswith("(final look)") if final_look else task.ci_method.startswith("betting")
        assert task.items_used == record["items_used"]
        assert summary["metrics"][f"fidelity/{task.task}/items_used"] == record["items_used"]
    first_ids = used_ids(tmp_path / "cache", "qg_invoice_total")

    again, summary_again = run(24, "again")  # same seed: same items, same looks, nothing scored
    assert summary_again["sequential"] == summary["sequential"]
    assert again.base_eval.from_cache and again.variant_eval.from_cache

    run(40, "more")  # a longer suite reuses every item scored before: no doc id is scored twice
    per_item = sorted((tmp_path / "cache" / "evals").glob("*/per-item-*/items/qg_invoice_total.jsonl"))
    assert len(per_item) == 2  # base and variant
    for path in per_item:
        ids = [json.loads(line)["doc_id"] for line in path.read_text().splitlines()]
        assert len(ids) == len(set(ids)) and set(first_ids) <= set(ids)


def test_a_finished_fixed_n_evaluation_is_read_not_rescored(tmp_path, sequential_cfg):
    """ItemScorer takes items of the model's full-suite evaluation and never builds a model for them."""
    import dataclasses

    from pipelines.evaluate.item_cache import ItemScorer
    from pipelines.evaluate.items import write_items
    from pipelines.records import EvalResult, TaskResult, Variant, save_record
    from pipelines.storage import write_manifest

    full = tmp_path / "evals" / "hash" / "full"
    records = [{"doc_id": d, "item_id": str(d), "target": "1", "prediction": "1", "score": 1.0, "correct": True,
                "choice_loglikelihoods": None} for d in range(10)]
    write_items(records, full / "items" / "t.jsonl")
    save_record(EvalResult(model="m", model_hash="hash", settings={}, settings_hash="s", suite_hashes={},
                           tasks=[TaskResult("t", "1", "generate_until", "exact_match", 1.0, None, 10,
                                             str(full / "items" / "t.jsonl"))],
                           reference_logprobs_path=None, seconds=0.0), full / "eval_result.json")
    write_manifest(full, {"stage": "evaluate"})
    variant = Variant(name="m", base="b", backend="none", method="none", scheme=None, checkpoint_dir="/nowhere",
                      size_bytes=0, content_hash="hash", cache_key="k", quantize_seconds=0.0, from_cache=True)
    cfg = dataclasses.replace(sequential_cfg, cache_dir=str(tmp_path))
    scorer = ItemScorer(cfg, variant, {"tasks": ["t"]}, "suite", None, full)
    got = scorer.score({"t": [3, 7]})
    assert [got["t"][d]["doc_id"] for d in (3, 7)] == [3, 7]
    assert scorer.scored == 0 and scorer._runner is None
    assert scorer.task_meta()["t"]["metric"] == "exact_match"


def test_the_looks_and_the_final_look_share_alpha(sequential_cfg):
    """Union bound: the sequences' alpha plus the final fixed-n look's alpha is the gate's whole alpha."""
    confidence = sequential_cfg.gate.confidence
    alpha_final = 1 - final_confidence(confidence)
    assert 0 < looks_alpha(confidence) < 1 - confidence and 0 < alpha_final < 1 - confidence
    assert looks_alpha(confidence) + alpha_final == pytest.approx(1 - confidence)
    monitor = TaskMonitor(sequential_cfg, "multiple_choice")
    assert [seq.alpha for seq in monitor.sequences.values()] == pytest.approx([looks_alpha(confidence)] * 3)


def sequential_pair(tmp_path, base_scores, variant_scores, reason):
    """A base and a sequential variant EvalResult of one binary task, its stop recorded as `reason`."""
    from pipelines.evaluate.items import write_items
    from pipelines.records import EvalResult, SequentialTask, TaskResult

    results = []
    for name, scores in (("base", base_scores), ("variant", variant_scores)):
        rows = [{"doc_id": d, "item_id": str(d), "target": "1", "prediction": str(int(s)), "score": float(s),
                 "correct": bool(s), "choice_loglikelihoods": None} for d, s in enumerate(scores)]
        path = write_items(rows, tmp_path / name / "t.jsonl")
        task = TaskResult("t", "1", "generate_until", "exact_match", float(sum(scores)) / len(scores), None,
                          len(scores), str(path))
        results.append(EvalResult(model=name, model_hash=name, settings={}, settings_hash="s", suite_hashes={},
                                  tasks=[task], reference_logprobs_path=None, seconds=0.0))
    results[1].sequential = [SequentialTask(task="t", items_used=len(base_scores), items_available=len(base_scores),
                                            looks=3, stop_reason=reason, method="betting", drop_low=-0.5,
                                            drop_high=0.5, flip_low=0.0, flip_high=0.9, kl_low=None, kl_high=None,
                                            kl_clip=None)]
    return results


@pytest.mark.parametrize("reason", [EXHAUSTED, DECIDED])
def test_a_task_that_used_its_suite_is_decided_by_the_fixed_n_interval_at_the_final_alpha(tmp_path, reason):
    """At the end of its suite the gate's own Tango interval decides, at 1 - alpha_final on every
    item; an interim stop keeps the confidence sequence's bounds (here a wide [-0.5, 0.5])."""
    import numpy as np

    from pipelines.fidelity import compare
    from pipelines.intervals import paired_binary_interval

    base, variant = [1] * 300 + [0] * 100, [1] * 296 + [0] * 4 + [0] * 98 + [1] * 2
    fidelity = compare(*sequential_pair(tmp_path, base, variant, reason), confidence=0.95, bootstrap_samples=200,
                       seed=0)
    task = fidelity.tasks[0]
    assert task.stop_reason == reason and task.confidence == 0.95 and task.items_used == 400
    if reason == DECIDED:
        assert (task.ci_low, task.ci_high) == (-0.5, 0.5)
        assert task.ci_method == "betting confidence sequence (anytime-valid) at 97.5% (interim looks)"
        return
    final = paired_binary_interval(np.array(base) == 1, np.array(variant) == 1, final_confidence(0.95), None)
    at_gate = paired_binary_interval(np.array(base) == 1, np.array(variant) == 1, 0.95, None)
    assert (task.ci_low, task.ci_high) == pytest.approx((final.low, final.high))
    assert task.ci_low < at_gate.low and task.ci_high > at_gate.high  # alpha_final < alpha: wider
    assert task.ci_method == f"{final.method} at 97.5% (final look)" and task.flip_ci_method.endswith("(final look)")
