"""The search / confirmation split (pipelines/search/split.py) and the sequential plan restricted to one side."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.search.split import side, split_tasks, split_units


@pytest.fixture(scope="module")
def cfg():
    from pipelines.pipeline import compose_config

    return compose_config(["tracking=off", "bench=off"])


@pytest.fixture(scope="module")
def manager(cfg):
    from pipelines.evaluate.suites import resolve_include_path, task_manager

    return task_manager(cfg.eval.tasks, resolve_include_path("embedded"))


def test_sides_are_disjoint_cover_every_item_and_keep_clusters_whole(cfg, manager):
    from pipelines.evaluate.sequential import task_units

    splits = split_tasks(cfg, manager, 0.5)
    for task, (units, clustered) in task_units(cfg, manager).items():
        search, confirmation = set(splits[task].search), set(splits[task].confirmation)
        assert not search & confirmation
        assert search | confirmation == {d for unit in units for d in unit}
        assert all(set(unit) <= search or set(unit) <= confirmation for unit in units)
    assert task_units(cfg, manager)["qg_vendor_facts"][1]  # the clustered task is among those checked


def test_confirmation_holds_its_share_of_the_items(cfg, manager):
    splits = split_tasks(cfg, manager, 0.3)
    invoices = splits["qg_invoice_total"]  # 600 single items: exactly 180 held out
    assert len(invoices.confirmation) == 180 and len(invoices.search) == 420


def test_split_is_seeded_and_not_the_sequential_order():
    units = [[d] for d in range(100)]
    first, again, other = (split_units("t", units, 1234, 0.5), split_units("t", units, 1234, 0.5),
                           split_units("t", units, 7, 0.5))
    assert first == again and first.confirmation != other.confirmation


def test_whole_cluster_goes_to_one_side_even_past_the_share():
    """Units of 3: the side fills unit by unit, so it may pass its share by less than one unit."""
    split = split_units("t", [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(10)], 0, 0.5)
    assert len(split.confirmation) == 15 or len(split.confirmation) == 18
    assert all((d // 3) * 3 in split.confirmation for d in split.confirmation)


def test_plan_restricted_to_a_side_keeps_the_full_plan_order(cfg, manager):
    from pipelines.evaluate.sequential import plan_tasks

    full, splits = plan_tasks(cfg, manager), split_tasks(cfg, manager, 0.5)
    restricted = plan_tasks(cfg, manager, side(splits, "search"))
    for task, plan in restricted.items():
        allowed = set(splits[task].search)
        assert plan.units == [unit for unit in full[task].units if unit[0] in allowed]


def test_unrestricted_plan_is_unchanged(cfg, manager):
    """plan_tasks without a split: the seeded permutation of task_units, as before the split existed."""
    import numpy as np

    from pipelines.evaluate.sequential import plan_tasks, task_units
    from pipelines.storage import stable_hash

    plans = plan_tasks(cfg, manager)
    for task, (units, _) in task_units(cfg, manager).items():
        rng = np.random.default_rng(int(stable_hash({"seed": cfg.eval.seed, "task": task}), 16))
        assert plans[task].units == [units[i] for i in rng.permutation(len(units))]


def test_limit_applies_before_the_split(cfg, manager):
    limited = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, limit=40))
    splits = split_tasks(limited, manager, 0.5)
    assert sorted(splits["qg_invoice_total"].search + splits["qg_invoice_total"].confirmation) == list(range(40))


class FakeScorer:
    """An ItemScorer of canned items: each document scores 1 if its id is even."""

    def __init__(self, directory, name):
        from pipelines.records import Variant

        self.directory, self.scored, self.asked, self.include = directory / name / "per-item", 0, [], None
        self.variant = Variant(name, "tiny", "none", "none", None, str(directory), 1, f"hash-{name}", "k", 0.0, True)

    def score(self, wanted):
        self.asked.append(wanted)

    def cached(self, task):
        return {d: {"doc_id": d, "score": float(d % 2 == 0)} for d in range(100)}

    def task_meta(self):
        return {task: {"version": "1", "output_type": "generate_until", "metric": "exact_match", "cluster_key": None}
                for task in ("a", "b")}

    def reference_logprobs(self, text):
        return None

    def release(self):
        pass


def test_confirmation_is_one_fixed_n_look_at_exactly_its_documents(cfg, tmp_path, monkeypatch):
    from pipelines.evaluate import sequential

    scorers = {role: FakeScorer(tmp_path, role) for role in ("base", "variant")}
    monkeypatch.setattr(sequential, "_scorers", lambda c, b, v: (scorers, {"base": {}, "variant": {}}, "suite", None))
    models = scorers["base"].variant, scorers["variant"].variant
    base_eval, variant_eval = sequential.evaluate_fixed(cfg, *models, {"a": [4, 1, 2], "b": [7]})
    assert scorers["variant"].asked == [{"a": [1, 2, 4], "b": [7]}]  # one look, every document at once
    assert [(t.task, t.n, t.value) for t in variant_eval.tasks] == [("a", 3, 2 / 3), ("b", 1, 0.0)]
    assert variant_eval.sequential == [] and base_eval.tasks[0].n == 3  # no sequence: fixed-n intervals decide


@pytest.mark.parametrize("bos", [True, False])
def test_the_reference_text_splits_into_a_search_head_and_a_confirmation_tail_the_probe_cuts_alike(bos):
    from pipelines.evaluate.reference import cut_windows
    from pipelines.search.split import split_windows

    ids, window, bos_id = list(range(1000, 1000 + 1037)), 64, 1 if bos else None
    windows = cut_windows(ids, window, 4096, bos_id)
    split = split_windows(windows, 0.3, bos)
    # 1,037 tokens make 16 windows of 63 (+ BOS) or 64 tokens; 0.3 of 16 rounds to the last 5.
    assert (len(windows), split.search, split.confirmation) == (16, range(0, 11), range(11, 16))
    # The sensitivity probe, given search_tokens as its max tokens, cuts exactly the search side's windows.
    assert cut_windows(ids, window, split.search_tokens, bos_id) == windows[:len(split.search)]


def test_a_reference_text_of_one_window_is_not_split():
    from pipelines.search.split import split_windows

    assert split_windows([[1, 2, 3]], 0.5, False) is None
    assert split_windows([[1, 2], [3, 4]], 0.1, False) is None  # rounds to no confirmation window


def test_one_side_of_the_reference_log_probs_is_those_windows_alone(tmp_path):
    import torch
    from safetensors.torch import load_file

    from pipelines.evaluate.reference import save_reference_logprobs, write_window_subset

    token_ids = torch.arange(5 * 4).reshape(5, 4)
    logprobs = torch.randn(5, 4, 7, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    whole = save_reference_logprobs(token_ids, logprobs, tmp_path / "whole.safetensors")
    part = write_window_subset(whole, range(3, 5), tmp_path / "side" / "tail.safetensors")
    stored = load_file(str(part))
    assert torch.equal(stored["token_ids"], token_ids[3:5]) and torch.equal(stored["logprobs"], logprobs[3:5])
