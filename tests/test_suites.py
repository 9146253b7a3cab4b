"""Suites and the eval cache key have one owner each: pipelines/evaluate/suites.py and requested_settings.

Exercised by: pytest tests/test_suites.py
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from pipelines.cli import compose_all
from pipelines.config import EvalConfig, TaskSize
from pipelines.errors import ConfigError, InputError
from pipelines.evaluate import NOT_IN_KEY, requested_settings
from pipelines.evaluate.suites import resolve_include_path, task_manager
from pipelines.storage import stable_hash


def test_include_path_expands_home_and_embedded_is_the_bundled_package(tmp_path, monkeypatch):
    from evalsuites import SUITES_DIR

    (tmp_path / "suites").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_include_path("~/suites") == (tmp_path / "suites").resolve()
    assert resolve_include_path("embedded") == SUITES_DIR
    assert resolve_include_path(None) is None
    with pytest.raises(InputError, match="eval.include_path=~/nowhere is not a directory"):
        resolve_include_path("~/nowhere")


def test_a_local_suite_is_indexed_without_lm_evals_built_in_tasks(tmp_path):
    from evalsuites import SUITES_DIR

    shutil.copytree(SUITES_DIR, tmp_path / "suites", ignore=shutil.ignore_patterns("__pycache__"))
    manager = task_manager(["qg_invoice_total"], tmp_path / "suites")
    assert "qg_invoice_total" in manager.all_tasks and "hellaswag" not in manager.all_tasks


@pytest.mark.slow  # indexes lm-eval's ~15k built-in tasks
def test_a_built_in_task_still_resolves_next_to_a_local_suite_and_a_typo_names_the_closest():
    embedded = resolve_include_path("embedded")
    manager = task_manager(["qg_invoice_total", "hellaswag"], embedded)
    assert {"qg_invoice_total", "hellaswag"} <= set(manager.all_tasks)
    with pytest.raises(ConfigError, match="unknown lm-eval task 'qg_invoice_totl' \\(did you mean 'qg_invoice_total'"):
        task_manager(["qg_invoice_totl"], embedded)


def key(cfg) -> str:
    return stable_hash(requested_settings(cfg, "reference text"))


def test_every_eval_field_keys_the_cache_unless_listed_as_unable_to_change_a_result():
    cfg = compose_all(["eval=domain"])[0]
    changed = {"runner": "vllm", "tasks": ["qg_policy"], "num_fewshot": 3, "limit": 7, "batch_size": 3,
               "max_length": 99, "seed": 1, "apply_chat_template": True, "add_bos_token": True,
               "reference_max_tokens": 100, "reference_window": 32, "cluster_keys": {"qg_policy": "meta.x"},
               "params": {"bootstrap_iters": 0},
               # NOT_IN_KEY: a label, content keyed elsewhere, a setting of the later fidelity stage,
               # how a sequential run picks items (its records are keyed by the doc ids it scored)
               "name": "renamed", "include_path": "/elsewhere", "reference_text": "/other.txt",
               "bootstrap_samples": 5, "sequential": True, "chunk_size": 20,
               "task_sizes": {"qg_policy": TaskSize(items=10, split="test", tokens_per_request=5)}}
    assert set(changed) == {f.name for f in dataclasses.fields(EvalConfig)}, "a new EvalConfig field: add it here"
    for name, value in changed.items():
        other = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **{name: value}))
        assert (key(other) == key(cfg)) == (name in NOT_IN_KEY), name
