"""MLflow tracker: one run per variant, nested under one parent run per sweep, plus the registry.

`python -m pipelines.run tracking=local` (sqlite:///mlruns/mlflow.db) or `tracking=server
tracking.uri=http://host:5000`; MLFLOW_TRACKING_URI overrides tracking.uri.

- Runs are written with `MlflowClient` and explicit run ids (no fluent global state), so children
  logged from other processes (Hydra joblib launcher) attach to the parent through the
  `mlflow.parentRunId` tag. SQLite allows one writer at a time: calls that hit "database is
  locked" are retried with backoff.
- A variant's run spans its work: it starts when the first stage started and ends when the last
  ended (`create_run(start_time=...)`, `set_terminated(end_time=...)`), cached stages included
  (tag `quantgate.reused`). Its name is `<model>/<variant>`, its description (`mlflow.note.content`)
  the verdict with its reasons (pipelines/track/describe.py); its dataset inputs and LoggedModel are
  made in pipelines/track/lineage.py, and every metric is linked to that model (and task metrics to
  their task's dataset).
- Registry: one registered model per base model (`tracking.registered_model`, default the model
  name), one version per promoted variant, pointing at the variant's LoggedModel. Only PROMOTE
  registers a version (tagged with the verdict and what champion policies rank by); `crown` then moves
  `tracking.promote_alias` once per command, to the champion (pipelines/track/alias.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import requests
import yaml

from pipelines.config import TrackingConfig
from pipelines.errors import ConfigError, InputError
from pipelines.logs import adopt_library_logs
from pipelines.champion import contender
from pipelines.records import ChampionDecision, Contender, Outcome, save_record
from pipelines.redact import redact, redact_config
from pipelines.storage import check_writable, library_versions
from pipelines.track import alias
from pipelines.track.describe import (NOTE_TAG, VIEW_KEY, VIEW_TAG, champion_lines, decision_label, run_description,
                                      runs_view, sweep_table)
from pipelines.track.keys import flatten_params, metric_task, outcome_metrics, outcome_summary, outcome_tags, run_name
from pipelines.track.lineage import DatasetRef, create_checkpoint_model, dataset_refs, register_version

log = logging.getLogger(__name__)
T = TypeVar("T")
HEALTH_TIMEOUT_S = 5.0


@dataclass
class MLflowTrackingConfig(TrackingConfig):
    """The MLflow tracker's fields (conf/tracking/local.yaml, server.yaml)."""

    # Any MLflow tracking URI; MLFLOW_TRACKING_URI overrides it when set.
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str | None = "mlruns/artifacts"
    experiment: str = "quantgate"
    registered_model: str | None = None
    promote_alias: str = "candidate"
    # A promoted checkpoint up to this size is copied into its MLflow LoggedModel (the registered
    # version's source); 0 (default) or a larger one stays where it is, named by a pointer file.
    log_checkpoint_max_mb: float = 0.0

    def __post_init__(self) -> None:
        if not self.promote_alias.strip():
            raise ConfigError("tracking.promote_alias is empty: name the registry alias PROMOTE sets, e.g. candidate")
        if self.log_checkpoint_max_mb < 0:
            raise ConfigError(f"tracking.log_checkpoint_max_mb={self.log_checkpoint_max_mb} must be >= 0")


def tracking_uri(tracking: MLflowTrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri


def check(tracking: MLflowTrackingConfig) -> None:
    """Raise InputError for a tracking URI MLflow is not used with here (sqlite or an HTTP server)."""
    uri = tracking_uri(tracking)
    scheme = urlparse(uri).scheme
    if scheme not in {"sqlite", "http", "https"}:
        raise InputError(f"tracking.uri={redact(uri)} has an unsupported scheme '{scheme}'; "
                         "use sqlite:///<path>.db or http(s)://<mlflow server>")


def check_reachable(tracking: MLflowTrackingConfig) -> None:
    """Raise InputError when the store cannot be reached or written; never waits more than seconds."""
    check(tracking)
    uri = tracking_uri(tracking)
    if urlparse(uri).scheme == "sqlite":
        _check_sqlite(uri)
    else:
        _check_http(uri)


def _check_sqlite(uri: str) -> None:
    check_writable(Path(uri.removeprefix("sqlite:///")).parent, "the tracking.uri directory")


def _check_http(uri: str) -> None:
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S)
    except requests.RequestException as error:
        raise InputError(f"tracking.uri={redact(uri)} is unreachable ({type(error).__name__}); "
                         "start the MLflow server or use tracking=local") from None
    if response.status_code != 200:
        raise InputError(f"tracking.uri={redact(uri)}/health answered HTTP {response.status_code}; "
                         "is it an MLflow server?")


class MLflowTracker:
    # Tagged on every run; the stages' own libraries come from the records (pipelines/track/keys.py).
    libraries = ("mlflow",)
    config_schema = MLflowTrackingConfig
    check = staticmethod(check)
    check_reachable = staticmethod(check_reachable)

    def __init__(self, tracking: MLflowTrackingConfig) -> None:
        from mlflow import MlflowClient

        adopt_library_logs()  # MLflow's notices (e.g. creating its database tables) belong in run.log
        self.tracking = tracking
        self.uri = tracking_uri(tracking)
        # MLflow's HTTP client retries for minutes by default; a dead server should fail a run soon.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # MLflow prints "View run ... at: <uri>" itself, credentials included; our log line says it redacted.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = _retry(self._experiment_id)

    def start_sweep(self, name: str, config: dict[str, Any]) -> str:
        run = _retry(self.client.create_run, self.experiment_id, run_name=f"sweep-{name}",
                     tags={"quantgate.sweep": name, "quantgate.role": "sweep", **_git_tags()})
        _retry(self.client.log_batch, run.info.run_id, params=_params(config))
        log.info("MLflow sweep run %s in %s", run.info.run_id, self.uri)
        return run.info.run_id

    def log_outcome(self, outcome: Outcome, config: dict[str, Any], parent_run_id: str | None = None,
                    reference: bool = False, register: bool = True) -> str:
        tags = {**outcome_tags(outcome, config, "reference" if reference else "variant"), **_git_tags(),
                **{f"quantgate.version.{k}": v for k, v in library_versions(*self.libraries).items()}}
        tags[NOTE_TAG] = run_description(outcome, tags.get("quantgate.scheme"), tags.get("quantgate.engine"),
                                         reference)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        started_ms, ended_ms = _run_span_ms(outcome)
        run_id = _retry(self.client.create_run, self.experiment_id, start_time=started_ms,
                        run_name=run_name(outcome), tags=tags).info.run_id
        try:
            self._log_results(run_id, outcome, config, tags, reference, ended_ms, register)
        except BaseException:
            _retry(self.client.set_terminated, run_id, "FAILED")  # never leave a run RUNNING forever
            raise
        _retry(self.client.set_terminated, run_id, "FAILED" if outcome.error else "FINISHED", end_time=ended_ms)
        evaluated = outcome.variant_eval or outcome.base_eval
        if tasks := [t.task for t in evaluated.tasks] if evaluated else []:
            _retry(self.client.set_experiment_tag, self.experiment_id, VIEW_TAG, json.dumps(runs_view(tasks)))
        log.info("MLflow run %s (%s) logged to %s; in the UI: #/experiments/%s/runs?viewStateShareKey=%s", run_id,
                 run_name(outcome), self.uri, self.experiment_id, VIEW_KEY)
        return run_id

    def log_sweep_report(self, parent_run_id: str, files: list[Path], outcomes: list[Outcome] | None = None,
                         champions: list[ChampionDecision] | None = None) -> None:
        for path in files:
            _retry(self.client.log_artifact, parent_run_id, str(path), "report")
        if outcomes:
            _retry(self.client.log_table, parent_run_id, sweep_table(outcomes), "summary_table.json")
            verdicts = [f"- `{run_name(o)}`: **{decision_label(o)}**" for o in outcomes]
            note = "\n".join([*champion_lines(champions or []),
                              "Sweep summary (report: `report/index.html`, table: artifact `summary_table.json`)",
                              "", *verdicts])
            _retry(self.client.set_tag, parent_run_id, NOTE_TAG, note)
        _retry(self.client.set_terminated, parent_run_id, "FINISHED")

    def log_run_report(self, run_id: str, files: list[Path]) -> None:
        for path in files:
            _retry(self.client.log_artifact, run_id, str(path), "report")

    def alias_holder(self, model: str) -> Contender | None:
        return alias.holder(self.client, self._registered_name(model), self.tracking.promote_alias, _retry)

    def crown(self, decision: ChampionDecision) -> str | None:
        return alias.crown(self.client, self._registered_name(decision.model), self.tracking.promote_alias,
                           decision, _retry)

    def _registered_name(self, model: str) -> str:
        return self.tracking.registered_model or model

    def _log_results(self, run_id: str, outcome: Outcome, config: dict[str, Any], tags: dict[str, str],
                     reference: bool, timestamp_ms: int, register: bool = True) -> None:
        datasets = dataset_refs(outcome)
        if datasets:
            _retry(self.client.log_inputs, run_id, datasets=[d.as_input() for d in datasets])
        model_id = self._log_model(run_id, outcome, tags, reference) if outcome.variant else None
        metrics = outcome_metrics(outcome)
        _retry(self.client.log_batch, run_id, params=_params(config),
               metrics=_linked_metrics(metrics, timestamp_ms, model_id, datasets))
        self._log_artifacts(run_id, outcome, config, metrics)
        if outcome.verdict and outcome.verdict.decision == "PROMOTE" and not reference and model_id and register:
            self._register(run_id, outcome, model_id)

    def _log_model(self, run_id: str, outcome: Outcome, tags: dict[str, str], reference: bool) -> str:
        model_tags = {key: value for key, value in tags.items() if key.startswith("quantgate.")
                      and not key.startswith("quantgate.version.")}
        promoted = bool(outcome.verdict and outcome.verdict.decision == "PROMOTE")
        copy_max_bytes = self.tracking.log_checkpoint_max_mb * 2**20 if promoted else -1
        return create_checkpoint_model(self.client, self.experiment_id, run_id, outcome, model_tags, reference,
                                       copy_max_bytes, call=_retry)

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
            (root / "summary.json").write_text(json.dumps(outcome_summary(outcome, metrics), indent=2, default=float))
            if outcome.error:
                (root / "error.txt").write_text(outcome.error + "\n")
            _retry(self.client.log_artifacts, run_id, str(root))

    def _register(self, run_id: str, outcome: Outcome, model_id: str) -> None:
        name = self._registered_name(outcome.model)
        tags = {"quantgate.verdict": "PROMOTE", alias.VARIANT_TAG: outcome.variant_name,
                alias.HASH_TAG: outcome.variant.content_hash, **alias.contender_tags(contender(outcome))}
        version = register_version(self.client, name, run_id, model_id, tags, call=_retry)
        log.info("registered %s version %s (model %s); the alias follows the champion", name, version, model_id)


def _run_span_ms(outcome: Outcome) -> tuple[int, int]:
    """(start, end) of the run in ms: its first stage's start and last stage's end, else now."""
    now = time.time()
    started = outcome.stages[0].started if outcome.stages else now
    ended = outcome.stages[-1].ended if outcome.stages else now
    return int(started * 1000), int(ended * 1000)


def _linked_metrics(metrics: dict[str, float], timestamp_ms: int, model_id: str | None,
                    datasets: list[DatasetRef]) -> list[Any]:
    """Metric entities linked to the model, and a task's metrics to that task's dataset too."""
    from mlflow.entities import Metric

    by_task = {d.task: d for d in datasets if d.task}
    reference = next((d for d in datasets if d.context == "reference"), None)
    entities = []
    for key, value in metrics.items():
        dataset = by_task.get(metric_task(key, list(by_task)))
        if dataset is None and reference and key.startswith("fidelity/reference/"):
            dataset = reference
        entities.append(Metric(key, value, timestamp_ms, 0, model_id=model_id,
                               dataset_name=dataset.name if dataset else None,
                               dataset_digest=dataset.digest if dataset else None))
    return entities


def _params(config: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(key, value[:6000]) for key, value in flatten_params(config).items()]


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


# "database is locked": another writer holds the lock. "UNIQUE constraint failed": MLflow upserts a
# tag by select-then-insert (session.merge), so two jobs setting the experiment's view tag at once
# both insert and one fails; retried, the select finds the row and updates it. That failure, raised
# after the job's run was FINISHED, once lost a joblib sweep job's outcome (a crash the test read as REJECT).
_LOST_RACES = ("database is locked", "UNIQUE constraint failed")


def _retry(call: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Retry a store call that lost a race with another process (sweep jobs share one SQLite store)."""
    for attempt in range(attempts - 1):
        try:
            return call(*args, **kwargs)
        except Exception as error:  # MlflowException or sqlalchemy's errors, both carry the text
            if not any(race in str(error) for race in _LOST_RACES):
                raise
            log.debug("sqlite race (attempt %d): %s", attempt + 1, error)
            time.sleep(0.2 * 2**attempt)
    return call(*args, **kwargs)
