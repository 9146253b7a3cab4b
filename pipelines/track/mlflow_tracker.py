"""MLflow tracker: one run per variant, nested under one parent run per sweep, plus the registry.

`python -m pipelines.run tracking=local` (sqlite:///mlruns/mlflow.db) or `tracking=server
tracking.uri=http://host:5000`; MLFLOW_TRACKING_URI overrides tracking.uri.

- Runs are written with `MlflowClient` and explicit run ids (no fluent global state), so children
  logged from other processes (Hydra joblib launcher) attach to the parent through the
  `mlflow.parentRunId` tag. SQLite allows one writer at a time: calls that hit "database is
  locked" are retried with backoff.
- Registry: one registered model per base model (`tracking.registered_model`, default the model
  name), one version per promoted variant. Only PROMOTE registers a version, tags it with the
  verdict and moves `tracking.promote_alias` to it; REJECT / INCONCLUSIVE never touch the registry.
  The version's source is `runs:/<run id>/checkpoint` (accepted on sqlite and by the HTTP server,
  which rejects local paths outside the run's artifacts): the checkpoint is copied there when it
  is at most `tracking.log_checkpoint_max_mb`, else a pointer file names its local path and hash.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import requests
import yaml

from pipelines.config import TrackingConfig
from pipelines.errors import InputError
from pipelines.records import Outcome, save_record
from pipelines.storage import check_writable, directory_size, library_versions
from pipelines.track.keys import flatten_params, outcome_metrics, outcome_tags, redact_config, redact_value

log = logging.getLogger(__name__)
T = TypeVar("T")
HEALTH_TIMEOUT_S = 5.0
LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors", "lm-eval", "mlflow", "vllm")


def tracking_uri(tracking: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri


def check_reachable(tracking: TrackingConfig) -> None:
    """Raise InputError when the store cannot be reached or written; never waits more than seconds."""
    uri = tracking_uri(tracking)
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in {"http", "https"}:
        _check_http(uri)
    else:
        raise InputError(f"tracking.uri={redact_value(uri)} has an unsupported scheme '{scheme}'; "
                         "use sqlite:///<path>.db or http(s)://<mlflow server>")


def _check_sqlite(uri: str) -> None:
    check_writable(Path(uri.removeprefix("sqlite:///")).parent, "the tracking.uri directory")


def _check_http(uri: str) -> None:
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S)
    except requests.RequestException as error:
        raise InputError(f"tracking.uri={redact_value(uri)} is unreachable ({type(error).__name__}); "
                         "start the MLflow server or use tracking=local") from None
    if response.status_code != 200:
        raise InputError(f"tracking.uri={redact_value(uri)}/health answered HTTP {response.status_code}; "
                         "is it an MLflow server?")


class MLflowTracker:
    check_reachable = staticmethod(check_reachable)

    def __init__(self, tracking: TrackingConfig) -> None:
        from mlflow import MlflowClient

        self.tracking = tracking
        self.uri = tracking_uri(tracking)
        # MLflow's HTTP client retries for minutes by default; a dead server should fail a run soon.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = _retry(self._experiment_id)

    def start_sweep(self, name: str, config: dict[str, Any]) -> str:
        run = _retry(self.client.create_run, self.experiment_id, run_name=f"sweep-{name}",
                     tags={"quantgate.sweep": name, "quantgate.role": "sweep", **_git_tags()})
        _retry(self.client.log_batch, run.info.run_id, params=_params(config))
        log.info("MLflow sweep run %s in %s", run.info.run_id, self.uri)
        return run.info.run_id

    def log_outcome(self, outcome: Outcome, config: dict[str, Any], parent_run_id: str | None = None,
                    reference: bool = False) -> str:
        from mlflow.entities import Metric

        tags = {**outcome_tags(outcome, config, "reference" if reference else "variant"), **_git_tags(),
                **{f"quantgate.version.{k}": v for k, v in library_versions(*LIBRARIES).items()}}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = _retry(self.client.create_run, self.experiment_id, run_name=outcome.variant_name,
                        tags=tags).info.run_id
        try:
            now = int(time.time() * 1000)
            metrics = outcome_metrics(outcome)
            _retry(self.client.log_batch, run_id, params=_params(config),
                   metrics=[Metric(key, value, now, 0) for key, value in metrics.items()])
            self._log_artifacts(run_id, outcome, config, metrics)
            if outcome.verdict and outcome.verdict.decision == "PROMOTE" and not reference:
                self._register(run_id, outcome)
        except BaseException:
            _retry(self.client.set_terminated, run_id, "FAILED")  # never leave a run RUNNING forever
            raise
        _retry(self.client.set_terminated, run_id, "FAILED" if outcome.error else "FINISHED")
        log.info("MLflow run %s (%s) logged to %s", run_id, outcome.variant_name, self.uri)
        return run_id

    def log_sweep_report(self, parent_run_id: str, files: list[Path]) -> None:
        for path in files:
            _retry(self.client.log_artifact, parent_run_id, str(path), "report")
        _retry(self.client.set_terminated, parent_run_id, "FINISHED")

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        existing = self.client.get_experiment_by_name(self.tracking.experiment)
        if existing:
            return existing.experiment_id
        try:
            return self.client.create_experiment(self.tracking.experiment, artifact_location=self._artifact_root())
        except MlflowException:  # another process created it first
            return self.client.get_experiment_by_name(self.tracking.experiment).experiment_id

    def _artifact_root(self) -> str | None:
        root = self.tracking.artifact_location
        if not root or "://" in root:
            return root
        if urlparse(self.uri).scheme in {"http", "https"}:
            log.info("tracking.artifact_location=%s is a local path; the server's artifact store is used", root)
            return None
        return Path(root).resolve().as_uri()

    def _log_artifacts(self, run_id: str, outcome: Outcome, config: dict[str, Any], metrics: dict[str, float]) -> None:
        with tempfile.TemporaryDirectory(prefix="quantgate-track-") as scratch:
            root = Path(scratch)
            for name in ("variant", "fidelity", "base_bench", "bench", "base_cost", "cost", "verdict"):
                if getattr(outcome, name) is not None:
                    save_record(getattr(outcome, name), root / "records" / f"{name}.json")
            _copy_items(outcome, root / "items")
            _copy_bench_reports(outcome, root / "bench")
            (root / "config.yaml").write_text(yaml.safe_dump(redact_config(config), sort_keys=False))
            (root / "summary.json").write_text(json.dumps(_summary(outcome, metrics), indent=2, default=float))
            if outcome.error:
                (root / "error.txt").write_text(outcome.error + "\n")
            _retry(self.client.log_artifacts, run_id, str(root))

    def _register(self, run_id: str, outcome: Outcome) -> None:
        from mlflow.exceptions import MlflowException

        name = self.tracking.registered_model or outcome.model
        self._log_checkpoint(run_id, outcome)
        try:
            _retry(self.client.create_registered_model, name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        tags = {"quantgate.verdict": "PROMOTE", "quantgate.variant": outcome.variant_name,
                "quantgate.content_hash": outcome.variant.content_hash if outcome.variant else ""}
        version = _retry(self.client.create_model_version, name, f"runs:/{run_id}/checkpoint", run_id=run_id,
                         tags=tags).version
        _retry(self.client.set_registered_model_alias, name, self.tracking.promote_alias, version)
        log.info("registered %s version %s, alias '%s'", name, version, self.tracking.promote_alias)

    def _log_checkpoint(self, run_id: str, outcome: Outcome) -> None:
        checkpoint = Path(outcome.variant.checkpoint_dir) if outcome.variant else None
        limit = self.tracking.log_checkpoint_max_mb * 2**20
        if checkpoint and checkpoint.is_dir() and directory_size(checkpoint) <= limit:
            _retry(self.client.log_artifacts, run_id, str(checkpoint), "checkpoint")
            return
        with tempfile.TemporaryDirectory(prefix="quantgate-ckpt-") as scratch:
            pointer = Path(scratch) / "quantgate-checkpoint.json"
            pointer.write_text(json.dumps(asdict(outcome.variant) if outcome.variant else {}, indent=2))
            _retry(self.client.log_artifact, run_id, str(pointer), "checkpoint")


def _params(config: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(key, value[:6000]) for key, value in flatten_params(config).items()]


def _summary(outcome: Outcome, metrics: dict[str, float]) -> dict[str, Any]:
    verdict = asdict(outcome.verdict) if outcome.verdict else None
    serve = outcome.variant_eval.settings.get("serve") if outcome.variant_eval else None
    return {"variant": outcome.variant_name, "model": outcome.model, "error": outcome.error,
            "decision": verdict["decision"] if verdict else None, "verdict": verdict, "metrics": metrics,
            "serve": serve or {"engine": "inprocess"}}


def _copy_bench_reports(outcome: Outcome, directory: Path) -> None:
    """The bench engine's own reports (GuideLLM's HTML and JSON) under bench/<base|variant>/."""
    for role, bench in (("base", outcome.base_bench), ("variant", outcome.bench)):
        for report in [Path(path) for path in (bench.reports if bench else []) if Path(path).is_file()]:
            (directory / role).mkdir(parents=True, exist_ok=True)
            shutil.copy2(report, directory / role / report.name)


def _copy_items(outcome: Outcome, target: Path) -> None:
    for role, result in (("base", outcome.base_eval), ("variant", outcome.variant_eval)):
        for task in result.tasks if result else []:
            source = Path(task.items_path)
            if source.is_file():
                (target / role).mkdir(parents=True, exist_ok=True)
                (target / role / f"{task.task}.jsonl").write_bytes(source.read_bytes())


def _git_tags() -> dict[str, str]:
    """The commit of quantgate's own code (not of whatever directory the run started in)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"quantgate.git_commit": commit.stdout.strip(), "mlflow.source.git.commit": commit.stdout.strip()}


def _retry(call: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Retry a store call while SQLite reports another writer holds the lock."""
    for attempt in range(attempts - 1):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException or sqlalchemy OperationalError, both carry the text
            if "database is locked" not in str(error):
                raise
            log.debug("sqlite busy (attempt %d): %s", attempt + 1, error)
            time.sleep(0.2 * 2**attempt)
    return call(*args, **kwargs)
