"""What a run used and what it made, as MLflow 3 entities: dataset inputs and a LoggedModel.

Exercised by `python -m pytest tests/test_track.py`.

- Datasets (`MlflowClient.log_inputs`, shown in the runs list's Dataset column and filter): each
  evaluated task (context `eval`, digest = the task's suite hash the evaluation cache is keyed by,
  source = the suite include path), the calibration data (context `calibration`, digest = hash of
  the calibration file) and the reference text (context `reference`, digest = its hash in the
  eval settings), all read from the records (EvalResult, Variant) that the evaluate and quantize
  stages resolved them into. Metrics about one task are linked to that task's dataset.
- Model: the checkpoint as a LoggedModel owned by the run (the runs list's Model column), with its
  scheme, engine, size and location as params/tags. By default its weights stay where they are
  (an external model: MLmodel + a pointer file naming the directory and content hash);
  `tracking.log_checkpoint_max_mb > 0` copies a promoted checkpoint up to that size into it.
- Registry: a version made on PROMOTE points at that LoggedModel (source = its artifact location,
  `model_id` set, and the model's `mlflow.modelVersions` tag lists the version).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

# How every store call is made: the tracker passes its retry-while-SQLite-is-locked wrapper.
Call = Callable[..., Any]

from pipelines.quantize.calibration import HUB_PREFIX
from pipelines.records import EvalResult, Outcome, Variant
from pipelines.storage import library_versions

CONTEXT_TAG = "mlflow.data.context"
EXTERNAL_TAG = "mlflow.model.isExternal"
VERSIONS_TAG = "mlflow.modelVersions"
POINTER_FILE = "quantgate-checkpoint.json"
LM_EVAL_TASKS = "https://github.com/EleutherAI/lm-evaluation-harness/tree/v{version}/lm_eval/tasks"
_BAD_MODEL_NAME_CHARS = re.compile(r"[/:.%\"']")


@dataclass
class DatasetRef:
    name: str
    digest: str
    # A local path (source type "local") or a URL ("http").
    source: str
    context: str
    # The lm-eval task the dataset is (None for calibration and reference data).
    task: str | None = None

    def as_input(self):
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        kind, key = ("http", "url") if "://" in self.source else ("local", "uri")
        source = get_dataset_source_from_json(json.dumps({key: self.source}), source_type=kind)
        dataset = MetaDataset(source=source, name=self.name, digest=self.digest)
        return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(CONTEXT_TAG, self.context)])


def dataset_refs(outcome: Outcome) -> list[DatasetRef]:
    """Every dataset the run's numbers came from, as its records state them: eval tasks, calibration
    data, reference text (nothing here resolves the config again)."""
    result = outcome.variant_eval or outcome.base_eval
    refs = _eval_refs(result) if result is not None else []
    if outcome.variant is not None and (calibration := _calibration_ref(outcome.variant)) is not None:
        refs.append(calibration)
    if result is not None and (reference := _reference_ref(result)) is not None:
        refs.append(reference)
    return refs


def _eval_refs(result: EvalResult) -> list[DatasetRef]:
    source = result.include_path or LM_EVAL_TASKS.format(version=library_versions("lm_eval").get("lm_eval"))
    return [DatasetRef(t.task, result.suite_hashes.get(t.task, t.version), source, "eval", t.task)
            for t in result.tasks]


def _calibration_ref(variant: Variant) -> DatasetRef | None:
    source = variant.calibration_source
    if not source or not variant.calibration_hash:
        return None
    if source.startswith(HUB_PREFIX):
        name = source.removeprefix(HUB_PREFIX)
        return DatasetRef(name, variant.calibration_hash, f"https://huggingface.co/datasets/{name.split(':')[0]}",
                          "calibration")
    return DatasetRef(Path(source).name, variant.calibration_hash, source, "calibration")


def _reference_ref(result: EvalResult) -> DatasetRef | None:
    digest = result.settings.get("reference_text_hash")
    if not result.reference_text_path or not digest:
        return None
    return DatasetRef(Path(result.reference_text_path).name, digest, result.reference_text_path, "reference")


def create_checkpoint_model(client, experiment_id: str, run_id: str, outcome: Outcome, tags: dict[str, str],
                            reference: bool, copy_max_bytes: float, call: Call) -> str:
    """Log the variant's checkpoint as a LoggedModel output of the run; return its model id."""
    from mlflow.entities import LoggedModelOutput

    variant = outcome.variant
    checkpoint = Path(variant.checkpoint_dir)
    copy = checkpoint.is_dir() and variant.size_bytes <= copy_max_bytes
    model_tags = {**tags, **({} if copy else {EXTERNAL_TAG: "true"})}
    params = {"scheme": variant.scheme or "none", "backend": variant.backend, "method": variant.method,
              "checkpoint_dir": variant.checkpoint_dir, "content_hash": variant.content_hash,
              "size_bytes": str(variant.size_bytes), "cache_key": variant.cache_key}
    model = call(client.create_logged_model, experiment_id, name=model_name(outcome), source_run_id=run_id,
                 tags=model_tags, params=params, model_type="base-checkpoint" if reference else "quantized-checkpoint")
    with tempfile.TemporaryDirectory(prefix="quantgate-model-") as scratch:
        _write_model_files(Path(scratch), model, outcome, external=not copy)
        if copy:
            shutil.copytree(checkpoint, Path(scratch) / "checkpoint")
        call(client.log_model_artifacts, model.model_id, scratch)
    call(client.finalize_logged_model, model.model_id, "READY")
    call(client.log_outputs, run_id, [LoggedModelOutput(model.model_id, 0)])
    return model.model_id


def _write_model_files(root: Path, model, outcome: Outcome, external: bool) -> None:
    from mlflow.models import Model
    from mlflow.models.utils import get_external_mlflow_model_spec

    spec = (get_external_mlflow_model_spec(model) if external
            else Model(artifact_path=model.artifact_location, model_uuid=model.model_id, model_id=model.model_id,
                       run_id=model.source_run_id))
    spec.save(str(root / "MLmodel"))
    (root / POINTER_FILE).write_text(json.dumps(asdict(outcome.variant), indent=2) + "\n")


def register_version(client, name: str, run_id: str, model_id: str, tags: dict[str, str], call: Call) -> str:
    """A registry version pointing at the LoggedModel; returns the version. The alias moves only to the
    command's champion, once every variant is judged (pipelines/track/alias.py)."""
    from mlflow.exceptions import MlflowException

    try:
        call(client.create_registered_model, name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # Source = the model's own artifact location: a `models:/<id>` source is resolved by the
    # SQLite registry through the *global* tracking URI (MLflow TODO), which this client does not set.
    source = call(client.get_logged_model, model_id).artifact_location
    version = call(client.create_model_version, name, source, run_id=run_id, tags=tags, model_id=model_id).version
    _list_version_on_model(client, model_id, name, version, call)
    return version


def _list_version_on_model(client, model_id: str, name: str, version: str, call: Call) -> None:
    """What mlflow.register_model does: the model page links to its versions (the HTTP server
    already adds the entry itself, so add it only when missing)."""
    listed = json.loads(call(client.get_logged_model, model_id).tags.get(VERSIONS_TAG) or "[]")
    if (name, str(version)) not in [(e.get("name"), str(e.get("version"))) for e in listed]:
        entries = json.dumps(listed + [{"name": name, "version": version}])
        call(client.set_logged_model_tags, model_id, {VERSIONS_TAG: entries})


def model_name(outcome: Outcome) -> str:
    """`<model>-<variant>`; MLflow forbids / : . % and quotes in LoggedModel names."""
    return _BAD_MODEL_NAME_CHARS.sub("_", f"{outcome.model}-{outcome.variant_name}")

