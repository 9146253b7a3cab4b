"""Per-item scoring for sequential runs: each (model, settings, suite, task, document) is scored once.

`ItemScorer(cfg, variant).score({task: [doc ids]})` scores only the documents not cached yet, with
lm-eval's own `simple_evaluate(samples={task: doc ids})` on the model it loads once (lm-eval
0.4.13: `samples` excludes `limit` and must name leaf tasks, which is what it is given), and
appends their records to the cache. A sweep thus scores each base item once however many variants
look at it, and a later run over more items reuses the earlier ones; a finished fixed-n evaluation
of the same model and settings (pipelines/evaluate/__init__.py's cache) is read instead of
rescoring its items. Layout, under
`<cache_dir>/evals/<model content hash>/per-item-<key>/` (key: the eval settings that can change
a result, as in pipelines/evaluate/__init__.py, but not eval.limit or the chunk size, and the
suite's content hash):
    items/<task>.jsonl      item records (pipelines/evaluate/items.py format), rewritten whole
                            (atomically) with each scored chunk added
    tasks.json              per task: version, output_type, metric, cluster_key
    reference_logprobs.safetensors   the reference-text pass (written once, when first needed)
    quantgate-manifest.json every file's size and sha256, rewritten after each change; checked
                            before each look reads the cache (a changed cache is set aside and
                            rescored: pipelines/storage.py). A cache from before manifests gets one.

Exercised by: pytest tests/test_sequential.py
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipelines.config import RunConfig
from pipelines.evaluate import RECORD_FILE, REFERENCE_FILE, cache_directory, eval_runner, reference_model
from pipelines.evaluate.items import cluster_key_for, items_from_samples, primary_metric, read_items
from pipelines.evaluate.reference import compute_reference_logprobs
from pipelines.evaluate.suites import task_manager
from pipelines.records import EvalResult, Variant, load_record
from pipelines.storage import atomic_write_text, cache_entry, stable_hash, write_manifest

log = logging.getLogger(__name__)


class ItemScorer:
    """Cached per-item results of one model; the model is loaded the first time an item is missing."""

    def __init__(self, cfg: RunConfig, variant: Variant, settings: dict[str, Any], suite: str,
                 include: Path | None, full_run: Path | None = None) -> None:
        # An item's result does not depend on how many items or looks there are: limit stays out of
        # the key, as the sequential settings do of every eval key (batch-mates, which vary, are accepted noise).
        key = stable_hash({"settings": {k: v for k, v in settings.items() if k != "limit"},
                           "suite": suite})
        self.directory = cache_directory(cfg, variant.content_hash, f"per-item-{key}")
        self.cfg, self.variant, self.settings, self.include = cfg, variant, settings, include
        # A finished fixed-n evaluation of the whole suite with the same settings (run_evaluate's
        # cache directory): its items are this model's results too, and are read, not rescored.
        self.full_run = full_run if full_run is not None and _finished(full_run) else None
        self._lm = self._runner = self._manager = None
        self.scored = 0  # items this process scored (not read from the cache)

    def cached(self, task: str) -> dict[int, dict]:
        path = self.directory / "items" / f"{task}.jsonl"
        items = self._full_run_items(task)
        if not path.is_file():
            return items
        with path.open() as handle:
            for line in handle:
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash: that item is scored again
                    continue
                items[item["doc_id"]] = item
        return items

    def task_meta(self) -> dict[str, dict]:
        path = self.directory / "tasks.json"
        meta = {t.task: {"version": t.version, "output_type": t.output_type, "metric": t.metric,
                         "cluster_key": t.cluster_key} for t in self._full_run_tasks()}
        return {**meta, **(json.loads(path.read_text()) if path.is_file() else {})}

    def _full_run_tasks(self) -> list:
        return load_record(EvalResult, self.full_run / RECORD_FILE).tasks if self.full_run else []

    def _full_run_items(self, task: str) -> dict[int, dict]:
        path = self.full_run / "items" / f"{task}.jsonl" if self.full_run else None
        return {item["doc_id"]: item for item in read_items(path)} if path and path.is_file() else {}

    def score(self, wanted: dict[str, list[int]]) -> dict[str, dict[int, dict]]:
        """Records of every wanted document per task, scoring the missing ones in one lm-eval call."""
        with cache_entry(self.directory) as manifest:  # parallel sweep jobs share the base's cache
            self._adopt(manifest)
            have = {task: self.cached(task) for task in wanted}
            missing = {task: sorted(set(ids) - set(have[task])) for task, ids in wanted.items()}
            missing = {task: ids for task, ids in missing.items() if ids}
            if missing:
                self._score_missing(missing, have)
        return {task: {doc: have[task][doc] for doc in ids} for task, ids in wanted.items()}

    def _score_missing(self, missing: dict[str, list[int]], have: dict[str, dict[int, dict]]) -> None:
        results = self.runner().evaluate(self.lm(), self.manager(), samples=missing)
        meta = self.task_meta()
        for task, samples in results["samples"].items():
            metric, filter_name = primary_metric(results, task)
            output_type = results["configs"][task]["output_type"]
            cluster_key = cluster_key_for(results, task, dict(self.cfg.eval.cluster_keys))
            items = items_from_samples(samples, metric, filter_name, output_type, task, cluster_key)
            self._add_lines(self.directory / "items" / f"{task}.jsonl", items)
            have[task].update({item["doc_id"]: item for item in items})
            meta[task] = {"version": str(results["versions"][task]), "output_type": output_type, "metric": metric,
                          "cluster_key": cluster_key}
            self.scored += len(items)
        atomic_write_text(self.directory / "tasks.json", json.dumps(meta, indent=2, sort_keys=True))
        self._write_manifest()
        log.info("%s: scored %d new items (%s)", self.variant.name, sum(map(len, missing.values())),
                 ", ".join(f"{task} {len(ids)}" for task, ids in missing.items()))

    @staticmethod
    def _add_lines(path: Path, items: list[dict]) -> None:
        """The file with `items` added, replaced whole: a crash leaves the old file, which its manifest matches."""
        old = path.read_text() if path.is_file() else ""
        old = old[:old.rfind("\n") + 1]  # a cut last line (appended by an older version) is scored again
        atomic_write_text(path, old + "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))

    def _adopt(self, manifest: dict | None) -> None:
        """A cache left without a manifest (older versions wrote none) gets one; a changed one was set aside."""
        if manifest is None and self.directory.is_dir():
            self._write_manifest()

    def _write_manifest(self) -> None:
        write_manifest(self.directory, {"stage": "evaluate", "per_item": True, "model": self.variant.name,
                                        "model_hash": self.variant.content_hash})

    def runner(self):
        if self._runner is None:
            self._runner = eval_runner(self.cfg, None)
        return self._runner

    def manager(self):
        if self._manager is None:
            self._manager = task_manager(self.cfg.eval.tasks, self.include)
        return self._manager

    def lm(self):
        if self._lm is None:
            self._lm = self.runner().build_lm(Path(self.variant.checkpoint_dir), self.cfg.eval.add_bos_token)
        return self._lm

    def reference_logprobs(self, text: str | None) -> str | None:
        """The reference-text log-probs of this model, computed on first use and then reused."""
        if text is None:
            return None
        if self.full_run is not None and (self.full_run / REFERENCE_FILE).is_file():
            return str(self.full_run / REFERENCE_FILE)
        path = self.directory / REFERENCE_FILE
        with cache_entry(self.directory) as manifest:
            self._adopt(manifest)
            if not path.is_file():
                model, tokenizer = reference_model(self.lm(), self.cfg, Path(self.variant.checkpoint_dir))
                path.parent.mkdir(parents=True, exist_ok=True)
                scratch = path.with_name(f".partial-{path.name}")  # hidden: never taken as part of the cache
                compute_reference_logprobs(model, tokenizer, text, window=self.cfg.eval.reference_window,
                                           max_tokens=self.cfg.eval.reference_max_tokens,
                                           batch_size=self.cfg.eval.batch_size,
                                           add_bos_token=self.settings["add_bos_token"], out_path=scratch)
                scratch.replace(path)
                self._write_manifest()
        return str(path)

    def release(self) -> None:
        """Drop the loaded model (its memory) once this side has nothing more to score."""
        self._lm = None


def _finished(directory: Path) -> bool:
    """A finished fixed-n evaluation whose files match its manifest (else it is set aside)."""
    with cache_entry(directory) as manifest:
        return manifest is not None
