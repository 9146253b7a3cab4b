"""The MLflow tracker against real MLflow 3.17.2 stores: a tmp sqlite file, and (slow) a real server.

nice -n 10 python -m pytest tests/test_track.py -q            (add -m slow for the server test)
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from pipelines.champion import choose
from pipelines.errors import InputError
from pipelines.serve.process import free_port
from pipelines.records import Percentiles, RatioInterval
from pipelines.track import make_tracker
from pipelines.track.mlflow_tracker import MLflowTracker, MLflowTrackingConfig, check_reachable

from conftest import T0, make_outcome

CONFIG = {"model": {"name": "tiny-llama", "source": "hf_abcdefghijklmnopqrstuvwxyz0123"},
          "quant": {"name": "gptq", "scheme": "W4A16", "method": "gptq", "params": {},
                    "calibration": {"source": "embedded"}},
          "eval": {"tasks": ["qg_invoice"], "reference_max_tokens": 4096, "include_path": "embedded",
                   "reference_text": "embedded"},
          "serve": {"name": "inprocess"},
          "hub": {"hf_token": "secret-value", "api_key": "k", "password": None},
          "bench": {"input_tokens": 64, "batch_sizes": [1, 4]}, "sweep": "nightly"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def tracker(store, monkeypatch, request) -> MLflowTracker:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = MLflowTrackingConfig(name="test", uri=f"sqlite:///{store}/mlflow.db",
                              artifact_location=str(store / "artifacts"), experiment="quantgate-test",
                              registered_model=f"tiny-{request.node.name}".replace("[", "-").replace("]", ""))
    return make_tracker(tracking)


def artifact_text(tracker: MLflowTracker, run_id: str, path: str) -> str:
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=tracker.uri)
    return Path(local).read_text()


def test_params_are_flattened_and_secrets_redacted(tracker, tmp_path):
    run = tracker.client.get_run(tracker.log_outcome(make_outcome(tmp_path), CONFIG))
    params = run.data.params
    assert params["quant.scheme"] == "W4A16" and params["bench.input_tokens"] == "64"
    assert params["eval.reference_max_tokens"] == "4096" and params["bench.batch_sizes"] == "[1, 4]"
    assert params["hub.hf_token"] == "***" and params["hub.api_key"] == "***" and params["model.source"] == "***"
    assert "secret-value" not in artifact_text(tracker, run.info.run_id, "config.yaml")


def test_metrics_tags_and_artifacts_read_back(tracker, tmp_path):
    run = tracker.client.get_run(tracker.log_outcome(make_outcome(tmp_path), CONFIG))
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["fidelity/qg_invoice/delta"] == pytest.approx(-0.01)
    assert metrics["fidelity/qg_invoice/flips"] == 4 and metrics["fidelity/reference/kl_mean"] == pytest.approx(0.01)
    assert metrics["bench/bs4/ttft_p95_ms"] == 150.0 and metrics["cost/usd_per_1m_tokens"] == pytest.approx(0.23)
    assert metrics["gate/decision"] == 1.0 and metrics["eval/qg_invoice/score"] == pytest.approx(0.79)
    assert tags["quantgate.verdict"] == "PROMOTE" and tags["quantgate.sweep"] == "nightly"
    assert tags["quantgate.suite.qg_invoice"] == "1.0@abc" and tags["quantgate.scheme"] == "W4A16"
    assert tags["quantgate.version.mlflow"] == "3.17.2"
    summary = json.loads(artifact_text(tracker, run.info.run_id, "summary.json"))
    assert summary["decision"] == "PROMOTE" and summary["metrics"]["cost/usd_per_1m_tokens"] == pytest.approx(0.23)
    assert json.loads(artifact_text(tracker, run.info.run_id, "records/fidelity.json"))["tasks"][0]["n"] == 200
    assert artifact_text(tracker, run.info.run_id, "items/variant/qg_invoice.jsonl").startswith('{"doc_id": 0')
    assert yaml.safe_load(artifact_text(tracker, run.info.run_id, "config.yaml"))["bench"]["batch_sizes"] == [1, 4]


def test_sweep_children_and_reference_nest_under_parent(tracker, tmp_path):
    parent = tracker.start_sweep("nightly", CONFIG)
    outcomes = [make_outcome(tmp_path, "none", decision=None), make_outcome(tmp_path, "fp8")]
    base = tracker.log_outcome(outcomes[0], CONFIG, parent, reference=True)
    child = tracker.log_outcome(outcomes[1], CONFIG, parent)
    tracker.log_sweep_report(parent, [_write(tmp_path / "summary.md", "| variant |")], outcomes,
                             [choose(outcomes, "cheapest")])
    runs = {run_id: tracker.client.get_run(run_id) for run_id in (base, child)}
    assert all(run.data.tags["mlflow.parentRunId"] == parent for run in runs.values())
    assert runs[base].data.tags["quantgate.role"] == "reference"
    assert tracker.client.get_run(parent).info.status == "FINISHED"
    assert [a.path for a in tracker.client.list_artifacts(parent, "report")] == ["report/summary.md"]
    table = json.loads(artifact_text(tracker, parent, "summary_table.json"))  # log_table's pandas "split" JSON
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["run"], r["verdict"]) for r in rows] == [("tiny-llama/none", "no verdict"),
                                                        ("tiny-llama/fp8", "PROMOTE")]
    assert rows[1]["delta/qg_invoice"] == pytest.approx(-0.01) and rows[1]["time/total_seconds"] == 421.0
    note = tracker.client.get_run(parent).data.tags["mlflow.note.content"]
    assert "`tiny-llama/fp8`: **PROMOTE**" in note
    assert note.startswith("**Champion of tiny-llama: fp8** (policy `cheapest`)") and "- runner-up: none" in note


def test_a_single_runs_report_is_attached_to_its_run(tracker, tmp_path):
    run_id = tracker.log_outcome(make_outcome(tmp_path), CONFIG)
    tracker.log_run_report(run_id, [_write(tmp_path / "index.html", "<html>report</html>")])
    assert artifact_text(tracker, run_id, "report/index.html") == "<html>report</html>"


def test_failed_variant_is_a_failed_run_with_its_error(tracker, tmp_path):
    outcome = make_outcome(tmp_path, "awq", decision=None, error="quantize: Cannot access accelerator device")
    run = tracker.client.get_run(tracker.log_outcome(outcome, CONFIG))
    assert run.info.status == "FAILED"
    assert run.data.tags["quantgate.error"] == "quantize: Cannot access accelerator device"
    assert "accelerator" in artifact_text(tracker, run.info.run_id, "error.txt")


def test_alias_moves_only_on_promote_to_a_version_of_the_logged_model(tracker, tmp_path):
    name, alias = tracker.tracking.registered_model, tracker.tracking.promote_alias
    tracker.log_outcome(make_outcome(tmp_path, "w2", decision="REJECT"), CONFIG)
    assert tracker.client.search_registered_models(f"name='{name}'") == []
    gptq = make_outcome(tmp_path, "gptq", decision="PROMOTE")
    promoted = tracker.log_outcome(gptq, CONFIG)
    for decision in ("REJECT", "INCONCLUSIVE"):
        tracker.log_outcome(make_outcome(tmp_path, "w8a8", decision=decision), CONFIG)
    assert tracker.alias_holder("tiny-llama") is None  # registered, but the alias waits for the champion
    tracker.crown(choose([gptq], "cheapest", tracker.alias_holder("tiny-llama")))
    version = tracker.client.get_model_version_by_alias(name, alias)
    model = logged_model(tracker, promoted)
    assert version.run_id == promoted and version.tags["quantgate.verdict"] == "PROMOTE"
    assert version.source == model.artifact_location
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": name, "version": version.version}]
    # By default the weights stay where they are: the model is external, a pointer names them.
    assert model.tags["mlflow.model.isExternal"] == "true"
    files = sorted(p.name for p in model_dir(model).iterdir())
    assert files == ["MLmodel", "quantgate-checkpoint.json"]
    assert json.loads((model_dir(model) / "quantgate-checkpoint.json").read_text())["content_hash"] == "hash-gptq"


def with_cost(outcome, usd: float):
    outcome.cost.measured = dataclasses.replace(outcome.cost.measured, usd_per_million_output_tokens=usd)
    return outcome


def test_champion_gets_the_alias_once_with_why_and_a_later_costlier_promote_does_not_displace_it(tracker, tmp_path):
    name, alias = tracker.tracking.registered_model, tracker.tracking.promote_alias
    cheap, costly = with_cost(make_outcome(tmp_path, "gptq"), 0.2), with_cost(make_outcome(tmp_path, "w8a8"), 0.3)
    cheap.cost.saving_vs_base = RatioInterval(0.3, 0.2, 0.4, 0.95, 3, "t on per-round log ratios")
    cheap_run = tracker.log_outcome(cheap, CONFIG)
    tracker.log_outcome(costly, CONFIG)  # finished last: it used to take the alias
    tracker.crown(choose([costly, cheap], "cheapest", tracker.alias_holder("tiny-llama")))
    version = tracker.client.get_model_version_by_alias(name, alias)
    assert version.run_id == cheap_run and version.tags["quantgate.champion.policy"] == "cheapest"
    assert version.tags["quantgate.champion.runner_up"] == "w8a8"
    assert version.tags["quantgate.champion.previous_holder"] == "none"
    assert version.tags["quantgate.champion.ranking"].startswith("gptq ($0.2/1M tok")
    holder = tracker.alias_holder("tiny-llama")
    assert (holder.variant, holder.usd_per_million_output_tokens, holder.size_bytes, holder.version) == (
        "gptq", 0.2, 7, str(version.version))
    assert holder.cost_saving_low == 0.2  # the paired saving's lower bound, read back from its tag
    later = with_cost(make_outcome(tmp_path, "awq"), 0.25)  # a single run afterwards
    tracker.log_outcome(later, CONFIG)
    decision = choose([later], "cheapest", tracker.alias_holder("tiny-llama"))
    assert decision.kept and tracker.crown(decision) == str(version.version)
    assert tracker.client.get_model_version_by_alias(name, alias).version == version.version


def test_copying_a_promoted_checkpoint_into_its_model_is_an_option(tracker, tmp_path):
    tracker.tracking.log_checkpoint_max_mb = 1
    run_id = tracker.log_outcome(make_outcome(tmp_path, "fp8", decision="PROMOTE"), CONFIG)
    model = logged_model(tracker, run_id)
    assert (model_dir(model) / "checkpoint" / "model.safetensors").read_text() == "weights"
    assert "mlflow.model.isExternal" not in model.tags
    rejected = logged_model(tracker, tracker.log_outcome(make_outcome(tmp_path, "w2", decision="REJECT"), CONFIG))
    assert not (model_dir(rejected) / "checkpoint").exists()  # only what PROMOTE registers is copied


def test_run_spans_its_stages_and_says_what_was_cached(tracker, tmp_path):
    run = tracker.client.get_run(tracker.log_outcome(make_outcome(tmp_path), CONFIG))
    assert run.info.run_name == "tiny-llama/gptq"
    assert run.info.start_time == T0 * 1000 and run.info.end_time == (T0 + 421.0) * 1000
    assert run.data.metrics["time/quantize_seconds"] == 300.0 and run.data.metrics["time/total_seconds"] == 421.0
    assert run.data.tags["quantgate.reused"] == "quantize"


def test_headline_metrics_and_description_answer_at_a_glance(tracker, tmp_path):
    run = tracker.client.get_run(tracker.log_outcome(make_outcome(tmp_path), CONFIG))
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["score/qg_invoice"] == pytest.approx(0.79) and metrics["delta/qg_invoice"] == pytest.approx(-0.01)
    assert metrics["cost/usd_per_1m_output_tokens"] == pytest.approx(0.23)
    assert metrics["throughput/knee_tokens_per_s"] == 120.0 and metrics["size/checkpoint_mb"] == 7 / 2**20
    assert tags["quantgate.engine"] == "hf" and tags["quantgate.model"] == "tiny-llama"
    note = tags["mlflow.note.content"]
    assert note.startswith("**PROMOTE** `tiny-llama/gptq` (W4A16, engine hf)")
    assert "- qg_invoice: drop within tolerance" in note and "| accuracy | qg_invoice | PASS |" in note
    assert "quantize 300.0 s (cached)" in note and "total 421.0 s" in note
    view = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags["mlflow.sharedViewState.quantgate"])
    assert {"tags.`quantgate.verdict`", "attributes.`Dataset`", "attributes.`Models`",
            "metrics.`delta/qg_invoice`"} <= set(view["selectedColumns"])


def test_suites_calibration_and_reference_are_dataset_inputs(tracker, tmp_path):
    from evalsuites import SUITES_DIR
    from pipelines.embedded import CALIBRATION_TEXT
    from pipelines.storage import hash_files

    run = tracker.client.get_run(tracker.log_outcome(make_outcome(tmp_path), CONFIG))
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    contexts = {name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for name, d in inputs.items()}
    assert contexts == {"qg_invoice": "eval", "calibration.txt": "calibration", "reference.txt": "reference"}
    assert inputs["qg_invoice"].dataset.digest == "abc"  # the suite hash the evaluation cache uses
    assert json.loads(inputs["qg_invoice"].dataset.source) == {"uri": str(SUITES_DIR)}
    assert inputs["calibration.txt"].dataset.digest == hash_files([CALIBRATION_TEXT])
    assert inputs["reference.txt"].dataset.digest == "ref0123"


def test_checkpoint_is_a_logged_model_with_metrics_linked_to_datasets(tracker, tmp_path):
    from mlflow.entities import LoggedModelStatus

    run_id = tracker.log_outcome(make_outcome(tmp_path, "gptq", decision="REJECT"), CONFIG)
    run = tracker.client.get_run(run_id)
    model = logged_model(tracker, run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert model.name == "tiny-llama-gptq" and model.status == LoggedModelStatus.READY
    assert model.params["scheme"] == "W4A16" and model.params["content_hash"] == "hash-gptq"
    assert model.tags["quantgate.verdict"] == "REJECT" and model.tags["quantgate.engine"] == "hf"
    linked = {m.key: m for m in model.metrics}
    assert linked["gate/decision"].value == -1.0 and linked["gate/decision"].dataset_name is None
    assert (linked["delta/qg_invoice"].dataset_name, linked["delta/qg_invoice"].dataset_digest) == ("qg_invoice", "abc")
    assert linked["fidelity/reference/kl_mean"].dataset_name == "reference.txt"


def logged_model(tracker: MLflowTracker, run_id: str):
    (output,) = tracker.client.get_run(run_id).outputs.model_outputs
    return tracker.client.get_logged_model(output.model_id)


def model_dir(model) -> Path:
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(model.artifact_location))


def _log_from_process(uri: str, artifacts: str, parent: str, tmp: str, names: list[str]) -> None:
    tracker = MLflowTracker(MLflowTrackingConfig(name="t", uri=uri, artifact_location=artifacts, experiment="quantgate-test"))
    for name in names:
        tracker.log_outcome(make_outcome(Path(tmp), name, decision="REJECT"), CONFIG, parent)


@pytest.mark.slow
def test_two_processes_log_to_one_sqlite_store_at_once(tracker, tmp_path):
    parent = tracker.start_sweep("concurrent", CONFIG)
    context = multiprocessing.get_context("spawn")
    jobs = [context.Process(target=_log_from_process, args=(tracker.uri, tracker.tracking.artifact_location, parent,
                                                           str(tmp_path), [f"{who}-{i}" for i in range(3)]))
            for who in ("a", "b")]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=180)
    assert [job.exitcode for job in jobs] == [0, 0]
    children = tracker.client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(run.info.run_name for run in children) == [f"tiny-llama/{who}-{i}" for who in "ab" for i in range(3)]
    assert {run.info.status for run in children} == {"FINISHED"}


def test_closed_port_is_a_one_line_unreachable_error(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match="unreachable") as error:
        check_reachable(MLflowTrackingConfig(name="t", uri=f"http://127.0.0.1:{free_port()}"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("uri, message", [("file:./mlruns", "unsupported scheme"), ("ftp://x", "unsupported")])
def test_unsupported_scheme(uri, message, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match=message):
        check_reachable(MLflowTrackingConfig(name="t", uri=uri))


def test_unwritable_sqlite_directory(tmp_path, monkeypatch):
    blocker = _write(tmp_path / "a-file", "x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises(InputError, match="is not writable"):
        check_reachable(MLflowTrackingConfig(name="t", uri="sqlite:///ignored.db"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# No MLflow job runner (huey consumers): the test needs none, and it slows start-up and shutdown.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path}/db", "--artifacts-destination", str(tmp_path / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, **SERVER_ENV})
    url = f"http://127.0.0.1:{port}"
    try:
        # A guard against a hung start only (15-20 s on idle cores), generous so a busy machine passes.
        deadline = time.monotonic() + 600
        while not _healthy(url):
            assert server.poll() is None, f"mlflow server exited with {server.returncode} before answering"
            assert time.monotonic() < deadline, "mlflow server hung: no /health answer in 10 minutes"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it forked
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its workers share the session we gave it
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_real_server_logs_reads_back_and_aliases_promote_only(mlflow_server, tmp_path, monkeypatch):
    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    tracking = MLflowTrackingConfig(name="server", uri="http://unused:1", artifact_location=None, registered_model="tiny")
    check_reachable(tracking)
    tracker = MLflowTracker(tracking)
    parent = tracker.start_sweep("server", CONFIG)
    rejected = tracker.log_outcome(make_outcome(tmp_path, "w2", decision="REJECT"), CONFIG, parent)
    assert tracker.client.search_registered_models("name='tiny'") == []
    gptq = make_outcome(tmp_path, "gptq", decision="PROMOTE")
    promoted = tracker.log_outcome(gptq, CONFIG, parent)
    tracker.crown(choose([gptq], "cheapest", tracker.alias_holder("tiny-llama")))
    run = tracker.client.get_run(rejected)
    assert run.data.metrics["fidelity/qg_invoice/delta"] == pytest.approx(-0.01)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["quantgate.verdict"] == "REJECT"
    assert json.loads(artifact_text(tracker, rejected, "summary.json"))["decision"] == "REJECT"
    version = tracker.client.get_model_version_by_alias("tiny", "candidate")
    model = logged_model(tracker, promoted)
    assert version.run_id == promoted and version.source == model.artifact_location
    pointer = mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/quantgate-checkpoint.json",
                                                  tracking_uri=mlflow_server)
    assert json.loads(Path(pointer).read_text())["content_hash"] == "hash-gptq"
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"qg_invoice", "calibration.txt", "reference.txt"}


def test_served_levels_are_keyed_by_load_and_guidellm_reports_are_artifacts(tracker, tmp_path):
    outcome = make_outcome(tmp_path)
    report = _write(tmp_path / "guidellm-r0.html", "<html>GuideLLM report</html>")
    pct = Percentiles(p50=10.0, p95=20.0, p99=30.0)
    level = dataclasses.replace(outcome.bench.levels[0], load="c4", tpot_ms=pct, errored_requests=2)
    outcome.bench = dataclasses.replace(outcome.bench, engine="openai", levels=[level], knee_load="c4",
                                        reports=[str(report)])
    run = tracker.client.get_run(tracker.log_outcome(outcome, CONFIG))
    metrics = run.data.metrics
    assert metrics["bench/c4/tpot_p95_ms"] == 20.0 and metrics["bench/c4/errored_requests"] == 2
    assert "bench/bs4/ttft_p95_ms" not in metrics
    assert run.data.tags["quantgate.bench.knee"] == "c4" and run.data.tags["quantgate.bench.engine"] == "openai"
    assert artifact_text(tracker, run.info.run_id, "bench/variant/guidellm-r0.html") == "<html>GuideLLM report</html>"
