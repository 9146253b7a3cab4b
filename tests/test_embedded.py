"""Tests of the embedded default model, its data generator and the bundled qg_domain suites.

Run: HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 pytest tests/test_embedded.py -q
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

from evalsuites import SUITES_DIR
from pipelines.embedded import CALIBRATION_TEXT, EMBEDDED_MODEL_DIR, REFERENCE_TEXT
from pipelines.embedded.data import SUITE_DATA_DIR, build_world, main as write_data, training_records
from pipelines.embedded.train import (TinyArchitecture, TrainConfig, add_activation_noise, build_model, train,
                                     train_tokenizer)

DATA_FILE_TASKS = ("qg_vendor_facts", "qg_invoice_total", "qg_policy_route")
TASKS = (*DATA_FILE_TASKS, "qg_policy_route_gen")  # the _gen task reads qg_policy_route.jsonl
MAX_MODEL_BYTES = 25 * 2**20


def test_same_seed_gives_identical_data():
    first, second = build_world(7), build_world(7)
    assert first.eval_sets == second.eval_sets
    assert (first.calibration_text, first.reference_text) == (second.calibration_text, second.reference_text)
    assert training_records(first, 2000) == training_records(second, 2000)
    assert build_world(8).eval_sets != first.eval_sets


def test_heldout_text_never_appears_in_training_records():
    world = build_world()
    corpus = set(training_records(world, 30000))
    heldout = [item.full_text() for items in world.eval_sets.values() for item in items]
    heldout += world.reference_text.splitlines()
    assert len(heldout) > 1800
    assert not corpus.intersection(heldout)


def test_shipped_data_files_match_the_generator(tmp_path):
    write_data(["--out", str(tmp_path)])
    for task in DATA_FILE_TASKS:
        assert (tmp_path / f"{task}.jsonl").read_bytes() == (SUITE_DATA_DIR / f"{task}.jsonl").read_bytes()
    assert (tmp_path / "calibration.txt").read_text() == CALIBRATION_TEXT.read_text()
    assert (tmp_path / "reference.txt").read_text() == REFERENCE_TEXT.read_text()


@pytest.mark.slow
def test_trainer_is_deterministic_on_a_tiny_budget():
    tiny = TrainConfig(steps=3, batch_size=2, seq_len=32, warmup_steps=1, tokenizer_records=400,
                       shape=TinyArchitecture(hidden=64, layers=1, heads=1, intermediate=128, vocab=320))
    first, second = train(tiny, progress=False), train(tiny, progress=False)
    assert first.losses == second.losses
    assert len(first.losses) == 3


def test_default_training_config_is_the_one_the_shipped_model_records():
    summary = json.loads((EMBEDDED_MODEL_DIR / "training_summary.json").read_text())
    assert asdict(TrainConfig()) == summary["config"]  # retraining with the defaults rebuilds the same files


def test_activation_noise_perturbs_training_forwards_only():
    tokenizer = train_tokenizer(training_records(build_world(), 200), 320)
    model = build_model(TinyArchitecture(hidden=64, layers=1, heads=1, intermediate=128, vocab=320), tokenizer)
    batch = tokenizer(["Invoice lines 47, 21."], return_tensors="pt")["input_ids"]
    model.eval()
    clean = model(batch).logits
    hooks = add_activation_noise(model, 0.04)
    assert len(hooks) == 7  # q, k, v, o, gate, up, down of the one layer; never lm_head
    assert torch.equal(model(batch).logits, clean)
    model.train()
    noisy = model(batch).logits
    assert not torch.equal(noisy, clean) and torch.allclose(noisy, clean, atol=0.5)
    for hook in hooks:
        hook.remove()
    assert torch.equal(model(batch).logits, clean)


def test_shipped_model_shapes_suit_every_quantization_scheme():
    config = AutoConfig.from_pretrained(EMBEDDED_MODEL_DIR)
    assert config.head_dim == 64 and config.vocab_size % 64 == 0
    with safe_open(EMBEDDED_MODEL_DIR / "model.safetensors", "pt") as weights:
        linear_shapes = [weights.get_slice(name).get_shape() for name in weights.keys()
                         if name.endswith("proj.weight") or name == "lm_head.weight"]
    assert linear_shapes and all(in_dim % 128 == 0 for _, in_dim in linear_shapes)
    assert (EMBEDDED_MODEL_DIR / "model.safetensors").stat().st_size <= MAX_MODEL_BYTES


def test_shipped_tokenizer_adds_bos_and_splits_digits():
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)
    ids = tokenizer("Total: 2048")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids)[-4:] == ["2", "0", "4", "8"]
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None


@pytest.fixture(scope="module")
def suite_tasks(tmp_path_factory) -> dict:
    from lm_eval.tasks import TaskManager, get_task_dict

    cwd = Path.cwd()
    # Load from an unrelated directory: data paths must not depend on the working directory.
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        # Only the shipped suites: indexing lm-eval's ~15k built-in task YAMLs as well takes 10-40 s.
        nested = get_task_dict(["qg_domain"], TaskManager(include_path=str(SUITES_DIR), include_defaults=False))
    finally:
        os.chdir(cwd)
    (group_tasks,) = nested.values()
    return group_tasks


def test_suites_load_through_task_manager_with_enough_items(suite_tasks):
    assert sorted(suite_tasks) == sorted(TASKS)
    for task in suite_tasks.values():
        docs = list(task.test_docs())
        assert len(docs) >= 500
        assert all(doc["id"] and doc["query"] and doc["answer"] for doc in docs)


def test_multiple_choice_targets_point_at_the_answer(suite_tasks):
    for name in ("qg_vendor_facts", "qg_policy_route"):
        task = suite_tasks[name]
        assert task.OUTPUT_TYPE == "multiple_choice"
        doc = next(iter(task.test_docs()))
        assert task.doc_to_choice(doc)[task.doc_to_target(doc)] == doc["answer"]
    assert suite_tasks["qg_invoice_total"].OUTPUT_TYPE == "generate_until"
    assert suite_tasks["qg_policy_route_gen"].OUTPUT_TYPE == "generate_until"


def test_invoice_filter_reads_the_total_off_every_gold_worked_solution(suite_tasks):
    from lm_eval.filters.extraction import RegexFilter

    task = suite_tasks["qg_invoice_total"]
    (regex_step,) = [step for step in task.config.filter_list[0]["filter"] if step["function"] == "regex"]
    docs = list(task.test_docs())
    # What generation returns for a perfect answer: the worked text, cut before the stop sequence.
    generated = [[doc["worked"]] for doc in docs]
    assert all("." not in text and "\n" not in text for (text,) in generated)
    extracted = [found for (found,) in RegexFilter(regex_step["regex_pattern"]).apply(generated, docs)]
    assert extracted == [doc["answer"] for doc in docs]


def test_invoice_worked_solutions_are_correct_and_fit_the_generation_budget(suite_tasks):
    task = suite_tasks["qg_invoice_total"]
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)
    for doc in task.test_docs():
        amounts = [int(amount) for amount in doc["query"].removeprefix("Invoice lines ").rstrip(".").split(", ")]
        ones, tens, total = doc["worked"].split(", ")
        ones_terms, ones_sum = ones.removeprefix("Ones ").split("=")
        tens_terms, tens_sum = tens.removeprefix("tens ").split("=")
        assert [int(d) for d in ones_terms.split("+")] == [amount % 10 for amount in amounts]
        carry, *tens_digits = (int(d) for d in tens_terms.split("+"))
        assert int(ones_sum) == sum(amount % 10 for amount in amounts) and carry == int(ones_sum) // 10
        assert tens_digits == [amount // 10 for amount in amounts] and int(tens_sum) == carry + sum(tens_digits)
        assert total == f"total {sum(amounts)}" == f"total {doc['answer']}"
        budget = task.config.generation_kwargs["max_gen_toks"]
        assert len(tokenizer(" " + doc["worked"] + ".", add_special_tokens=False)["input_ids"]) <= budget


def test_suite_ids_are_unique_per_task():
    for task in DATA_FILE_TASKS:
        rows = [json.loads(line) for line in (SUITE_DATA_DIR / f"{task}.jsonl").read_text().splitlines()]
        assert len({row["id"] for row in rows}) == len(rows)


def test_vendor_facts_declares_its_vendor_as_the_cluster_of_every_item():
    import yaml

    task_yaml = (SUITES_DIR / "qg_domain" / "vendor_facts" / "qg_vendor_facts.yaml").read_text()
    metadata = yaml.safe_load(task_yaml)["metadata"]
    rows = [json.loads(line) for line in (SUITE_DATA_DIR / "qg_vendor_facts.jsonl").read_text().splitlines()]
    vendors = [row["meta"]["vendor"] for row in rows]
    assert metadata["cluster_key"] == "meta.vendor" and metadata["version"] == 1.1
    assert len(set(vendors)) == 150 and all(row["query"].find(row["meta"]["vendor"]) > 0 for row in rows)
