"""The evaluate stage: lm-eval on one checkpoint, per-item records, reference log-probs, all cached.

`run_evaluate(cfg, variant)` evaluates `variant` once per (checkpoint content hash, suite content,
eval settings); a second call with the same three evaluates nothing and returns the cached
EvalResult. Cached results live in `<cache_dir>/evals/<content hash>/<key>/`:
    eval_result.json         the EvalResult record
    items/<task>.jsonl       per-item records (format: pipelines/evaluate/items.py)
    reference_logprobs.safetensors   reference-text log-probs (format: pipelines/evaluate/reference.py)
    lm_eval_results.json     lm-eval's own aggregate output, for audit
    quantgate-manifest.json  written last, with every file's size and sha256: a directory without
                             it is incomplete and redone, one whose files differ from it is set
                             aside and redone (pipelines/storage.py)

What the key covers (everything that can change a result, nothing that cannot):
  - the suite: every file under the include path but READMEs (task YAMLs with their
    `metadata.version`, utils.py, data files; suites keep their data there), or lm-eval's version
    for built-in tasks (their hub datasets cannot be hashed offline; the record's per-task
    suite_hashes also cover the exact documents, prompts and targets scored, from lm-eval's hashes);
  - settings: every EvalConfig field but those listed in NOT_IN_KEY (each with why it cannot change
    a result), so a new field is keyed by default: runner, tasks, num_fewshot, limit, max_length,
    add_bos_token, apply_chat_template, seed, eval.params, the reference window/max tokens, and
    batch_size (padding and batch composition change logits slightly at low precision, and a sweep
    reuses its base at one batch size anyway); plus the model dtype, the device type, the reference
    text's hash and the versions of the runner's `libraries` (lm_eval, transformers, torch; + vllm).
The record's `settings` holds the same values with add_bos_token resolved to what the tokenizer
actually does, so a BOS mismatch between base and variant (lm-eval issue #2676) is caught by the
fidelity comparison.

Exercised by: pytest tests/test_evaluate.py
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.config import EvalConfig, RunConfig
from pipelines.evaluate.items import cluster_key_for, items_from_samples, primary_metric, write_items
from pipelines.evaluate.reference import compute_reference_logprobs, reference_path, reference_text
from pipelines.evaluate.runner import EvalRunner
from pipelines.evaluate.served_runner import LM_EVAL_MODEL as SERVED_RUNNER
from pipelines.evaluate.served_runner import ServedRunner
from pipelines.evaluate.suites import check_suites, resolve_include_path, task_manager
from pipelines.models import load_causal_lm, load_tokenizer, offline_environment
from pipelines.records import EvalResult, ServedModel, TaskResult, Variant, load_record, save_record
from pipelines.registry import EVAL_RUNNERS, resolve
from pipelines.serve import engine_identity
from pipelines.storage import (atomic_directory, atomic_write_text, cache_entry, hash_files, library_versions,
                               stable_hash, write_manifest)

log = logging.getLogger(__name__)

RECORD_FILE = "eval_result.json"
REFERENCE_FILE = "reference_logprobs.safetensors"
# EvalConfig fields left out of the eval cache key, each because it cannot change a result; every
# other field is in the key, so a new field keys the cache unless it is added here with its reason.
NOT_IN_KEY = {
    "name",               # a label for the config
    "include_path",       # where the suite lives; its content is keyed as `suite` (suite_hash)
    "reference_text",     # a path or `embedded`; its content is keyed as reference_text_hash
    "bootstrap_samples",  # used by the fidelity comparison, after evaluation
    # Sequential runs key their records by the doc ids they scored; an item's score does not depend
    # on the order or chunking, so a fixed-n evaluation's items serve a sequential run and back.
    "sequential",
    "chunk_size",
    "task_sizes",         # plan=true's estimate of hub tasks' sizes; the run counts what it scores
}
# Fields added after caches existed: keyed only when set, so caches made before them stay valid.
KEYED_ONLY_WHEN_SET = {"cluster_keys"}


def run_evaluate(cfg: RunConfig, variant: Variant, served: ServedModel | None = None) -> EvalResult:
    """Evaluate `variant` on cfg.eval's tasks (through `served` when given), or reuse the cached result."""
    offline_environment(cfg.model)
    include = resolve_include_path(cfg.eval.include_path)
    text = reference_text(cfg.eval.reference_text)
    settings = requested_settings(cfg, text, served)
    suite = suite_hash(include)
    directory = cache_directory(cfg, variant.content_hash, stable_hash({"settings": settings, "suite": suite}))
    # Parallel sweep jobs (joblib launcher) share the base: one evaluates it, the others wait and reuse.
    # Every file of a cached evaluation is hashed before it is read (small next to evaluating).
    with cache_entry(directory, cfg.overwrite) as manifest:
        if manifest is not None:
            log.info("reusing cached evaluation of %s from %s", variant.name, directory)
            return with_provenance(load_cached(directory, variant.name), include, cfg.eval)
        log.info("evaluating %s on %s", variant.name, ", ".join(cfg.eval.tasks))
        runner = eval_runner(cfg, served)
        with atomic_directory(directory) as scratch:
            result = _evaluate_into(scratch, directory, runner, cfg, variant, settings, suite, include, text)
            write_manifest(scratch, {"stage": "evaluate", "model": variant.name,
                                     "model_hash": variant.content_hash, "settings_hash": result.settings_hash,
                                     "suite_hash": suite, "include_path": str(include) if include else None})
    log.info("evaluation of %s written to %s", variant.name, directory)
    return result


def check_evaluate(eval_cfg: EvalConfig) -> None:
    """Preflight: the runner takes these settings, and every suite loads and renders."""
    resolve(EVAL_RUNNERS, "eval runner", eval_cfg.runner).check(eval_cfg)
    check_suites(eval_cfg)


def requested_settings(cfg: RunConfig, text: str | None, served: ServedModel | None = None) -> dict[str, Any]:
    """Every eval setting that can change a result: the EvalConfig fields (less NOT_IN_KEY), the
    model dtype, the device type, the reference text's hash and the runner's library versions."""
    ev = cfg.eval
    settings = {name: value for name, value in dataclasses.asdict(ev).items()
                if name not in NOT_IN_KEY and (name not in KEYED_ONLY_WHEN_SET or value)}
    if served is not None:
        # Served: the engine, its version and args decide the numbers (and key the cache) instead of the runner.
        settings.update(serve=engine_identity(served), runner=SERVED_RUNNER)
    runner_class = resolve(EVAL_RUNNERS, "eval runner", ev.runner)
    return {**settings, "dtype": cfg.model.dtype, "device": cfg.hardware.device.split(":")[0],
            "reference_text_hash": stable_hash(text) if text is not None else None,
            "versions": library_versions(*runner_class.libraries)}


def cache_directory(cfg: RunConfig, model_hash: str, key: str) -> Path:
    """Where one model's evaluations under `key` are cached (fixed-n here, per-item and sequential in
    pipelines/evaluate/item_cache.py and sequential.py): `<cache_dir>/evals/<model content hash>/<key>`."""
    return Path(cfg.cache_dir) / "evals" / model_hash / key


def eval_runner(cfg: RunConfig, served: ServedModel | None) -> EvalRunner:
    """The runner scoring in process (eval.runner), or through `served`'s endpoint."""
    if served is None:
        return resolve(EVAL_RUNNERS, "eval runner", cfg.eval.runner)(cfg.eval, cfg.model, cfg.hardware.device)
    return ServedRunner(cfg.eval, cfg.model, cfg.hardware.device, served, cfg.serve)


def suite_hash(include: Path | None) -> str:
    """Content hash of every suite file; built-in tasks are pinned by the lm-eval version instead."""
    if include is None:
        return stable_hash({"builtin_tasks": library_versions("lm_eval")})
    # READMEs change no result; hidden files and bytecode are not the suite.
    files = [p for p in include.rglob("*") if p.is_file() and p.suffix != ".md" and "__pycache__" not in p.parts
             and not any(part.startswith(".") for part in p.relative_to(include).parts)]
    return hash_files(files, root=include)


def effective_add_bos_token(tokenizer, configured: bool | None) -> bool:
    """What lm-eval will do: the configured value, else whether the tokenizer prepends BOS itself."""
    if configured is not None:
        return configured
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("hello")["input_ids"][:1] == [bos]


def with_provenance(result: EvalResult, include: Path | None, eval_cfg: EvalConfig) -> EvalResult:
    """The record with where its suites and reference text came from, so tracking never resolves the
    config again (records cached before these fields existed get them here too; neither is in the key)."""
    reference = reference_path(eval_cfg.reference_text)
    return dataclasses.replace(result, include_path=str(include) if include else None,
                               reference_text_path=str(reference) if reference else None)


def load_cached(directory: Path, name: str) -> EvalResult:
    """The cached record, with its file paths pointing at where the cache is now."""
    result = load_record(EvalResult, directory / RECORD_FILE)
    for task in result.tasks:
        task.items_path = str(directory / "items" / f"{task.task}.jsonl")
    if result.reference_logprobs_path is not None:
        result.reference_logprobs_path = str(directory / REFERENCE_FILE)
    result.model, result.from_cache = name, True
    return result


def _evaluate_into(scratch: Path, final: Path, runner: EvalRunner, cfg: RunConfig, variant: Variant,
                   settings: dict[str, Any], suite: str, include: Path | None, text: str | None) -> EvalResult:
    start = time.perf_counter()
    checkpoint = Path(variant.checkpoint_dir)
    tokenizer = load_tokenizer(checkpoint, cfg.model.trust_remote_code)
    settings = {**settings, "add_bos_token": effective_add_bos_token(tokenizer, cfg.eval.add_bos_token)}
    manager = task_manager(cfg.eval.tasks, include)
    # Served scoring always states BOS (lm-eval's API models drop it otherwise); in-process keeps the config's.
    served = isinstance(runner, ServedRunner)
    lm = runner.build_lm(checkpoint, settings["add_bos_token"] if served else cfg.eval.add_bos_token)
    results = runner.evaluate(lm, manager)
    tasks, suite_hashes = _write_tasks(results, scratch, final, suite, dict(cfg.eval.cluster_keys))
    logprobs_path = None
    if text is not None:
        model, reference_tokenizer = reference_model(None if served else lm, cfg, checkpoint)
        compute_reference_logprobs(model, reference_tokenizer, text, window=cfg.eval.reference_window,
                                   max_tokens=cfg.eval.reference_max_tokens, batch_size=cfg.eval.batch_size,
                                   add_bos_token=settings["add_bos_token"], out_path=scratch / REFERENCE_FILE)
        logprobs_path = str(final / REFERENCE_FILE)
    result = EvalResult(model=variant.name, model_hash=variant.content_hash, settings=settings,
                        settings_hash=stable_hash(settings), suite_hashes=suite_hashes, tasks=tasks,
                        reference_logprobs_path=logprobs_path, seconds=time.perf_counter() - start)
    result = with_provenance(result, include, cfg.eval)
    save_record(result, scratch / RECORD_FILE)
    return result


def _write_tasks(results: dict[str, Any], scratch: Path, final: Path, suite: str,
                 cluster_keys: dict[str, str]) -> tuple[list[TaskResult], dict[str, str]]:
    """Per-item files and TaskResults for every leaf task lm-eval ran (groups have no items)."""
    atomic_write_text(scratch / "lm_eval_results.json", json.dumps(
        {k: v for k, v in results.items() if k != "samples"}, indent=2, default=str))
    tasks, suite_hashes = [], {}
    for task, samples in sorted(results["samples"].items()):
        metric, filter_name = primary_metric(results, task)
        output_type = results["configs"][task]["output_type"]
        cluster_key = cluster_key_for(results, task, cluster_keys)
        items = items_from_samples(samples, metric, filter_name, output_type, task, cluster_key)
        write_items(items, scratch / "items" / f"{task}.jsonl")
        version = str(results["versions"][task])
        summary = results["results"][task]
        stderr = summary.get(f"{metric}_stderr,{filter_name}")
        tasks.append(TaskResult(task=task, version=version, output_type=output_type, metric=metric,
                                value=float(summary[f"{metric},{filter_name}"]),
                                stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                                n=len(items), items_path=str(final / "items" / f"{task}.jsonl"),
                                cluster_key=cluster_key))
        # The exact documents, prompts and targets scored: equal hashes mean the same items were asked.
        asked = [(s["doc_hash"], s["prompt_hash"], s["target_hash"]) for s in samples if s["filter"] == filter_name]
        suite_hashes[task] = stable_hash({"suite": suite, "version": version, "items": asked})
    return tasks, suite_hashes


def reference_model(lm, cfg: RunConfig, checkpoint: Path):
    """The model lm-eval already loaded (hf), or a transformers load of the checkpoint (vllm, served)."""
    if lm is not None and cfg.eval.runner == "hf":
        return lm.model, lm.tokenizer
    model = load_causal_lm(checkpoint, cfg.model.dtype, cfg.model.trust_remote_code,
                           cfg.model.allow_pickle, cfg.hardware.device)
    return model, load_tokenizer(checkpoint, cfg.model.trust_remote_code)
