"""The sweep on a real one-node SLURM cluster with a PostgreSQL-backed MLflow server, both brought up
by deploy/local-cluster.sh (root only: it starts munged, slurmctld, slurmd, slurmdbd, MariaDB,
PostgreSQL and `mlflow server`, and brings them down again, also when a test fails)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines import sweep

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local-cluster.sh"
CANNOT_INSTALL = 4  # the script's exit code when a prerequisite cannot be installed on this machine
BASE_EVALUATION = "[pipelines.evaluate][INFO] - evaluating none on"


@dataclass
class Cluster:
    directory: Path
    tracking_uri: str
    env: dict[str, str]

    def port(self, name: str) -> int:
        ports = dict(line.split("=", 1) for line in (self.directory / "ports.env").read_text().split())
        return int(ports[name])


def _script(action: str, directory: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTGATE_PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), action, str(directory)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("needs root: deploy/local-cluster.sh starts munged, slurmd and slurmctld as root")
    # Outside pytest's tmp (mode 0700): PostgreSQL and MariaDB run as their own users and must reach it.
    directory = Path(tempfile.mkdtemp(prefix="quantgate-cluster-"))
    directory.chmod(0o755)
    try:
        up = _script("up", directory)
        if up.returncode == CANNOT_INSTALL:
            pytest.skip(up.stderr.strip().splitlines()[-1])
        assert up.returncode == 0, up.stderr
        assert _script("up", directory).stdout == up.stdout  # a second `up` reuses what runs, same ports
        lines = dict(line.split(" ", 1)[1].split("=", 1) if line.startswith("export ") else ("", "")
                     for line in up.stdout.splitlines())
        uri = next(word.split("=", 1)[1] for word in up.stdout.split() if word.startswith("tracking.uri="))
        env = {**os.environ, "SLURM_CONF": lines["SLURM_CONF"], "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        yield Cluster(directory, uri, env)
    finally:
        down = _script("down", directory)
        status = _script("status", directory).stdout
        shutil.rmtree(directory, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert "running" not in status, status  # every daemon `up` started is stopped


def sweep_command(cluster: Cluster, tmp: Path, quants: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.run", "-m", f"quant={quants}", "eval=quick", "bench=off",
            "hydra/launcher=slurm", "tracking=server", f"tracking.uri={cluster.tracking_uri}",
            f"cache_dir={tmp / 'cache'}", f"hydra.sweep.dir={tmp / 'multirun'}", f"sweep={tmp.name}", *extra]


def sweep_runs(cluster: Cluster, sweep: str):
    """The sweep's parent runs and the latest one's children, through the MLflow client of the server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cluster.tracking_uri)
    experiment = client.get_experiment_by_name("quantgate")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`quantgate.sweep` = '{sweep}'")
    parents = [run for run in runs if run.data.tags.get("quantgate.role") == "sweep"]
    latest = max(parents, key=lambda run: run.info.start_time)  # a rerun of the sweep starts a new parent
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{latest.info.run_id}'")
    return parents, children


def postgres_run_ids(cluster: Cluster) -> set[str]:
    """The runs as PostgreSQL stores them, read without MLflow."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=cluster.port("PG_PORT"), user="postgres", dbname="mlflow") as db:
        return {row[0] for row in db.execute("SELECT run_uuid FROM runs")}


def sacct_states(cluster: Cluster) -> dict[str, str]:
    listing = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State"], capture_output=True, text=True,
                             env=cluster.env, check=True).stdout
    return dict(line.split("|", 1) for line in listing.splitlines())


def base_evaluations(tmp: Path) -> int:
    """Outcomes whose base evaluation was computed, not read from the cache (the records say which)."""
    outcomes = (tmp / "cache" / "sweeps" / tmp.name / "outcomes").glob("*.json")
    return sum(not json.loads(path.read_text())["base_eval"]["from_cache"] for path in outcomes)


@pytest.mark.slow
def test_sweep_runs_one_slurm_job_per_variant_and_logs_to_postgres(cluster, tmp_path):
    result = subprocess.run(sweep_command(cluster, tmp_path, "fp8,canary-w2"), capture_output=True, text=True,
                            env=cluster.env, cwd=tmp_path, timeout=900)
    parents, children = sweep_runs(cluster, tmp_path.name)
    assert len(parents) == 1 and sorted(r.data.tags["quantgate.quant"] for r in children) == ["canary-w2", "fp8"]
    assert all(run.info.status == "FINISHED" for run in children)
    assert {parents[0].info.run_id} | {run.info.run_id for run in children} <= postgres_run_ids(cluster)
    assert result.returncode == 1, result.stderr[-3000:]  # the canary is REJECTed: the gate's code
    jobs = [job for job in sacct_states(cluster).items() if "_" in job[0]]  # the array's tasks: one per variant
    assert len(jobs) == 2 and all(state == "COMPLETED" for _, state in jobs), jobs
    assert base_evaluations(tmp_path) == 1


def _job_evaluating_base(folder: Path, deadline: float) -> str:
    """The SLURM job id (array_task) whose log shows it evaluating the base, polled until the deadline."""
    while time.time() < deadline:
        for log in folder.glob(".submitit/*/*_log.out"):
            if BASE_EVALUATION in log.read_text(errors="replace"):
                return log.parent.name
        time.sleep(0.2)
    raise AssertionError("no job started evaluating the base")


def _wait_until_queue_empty(cluster: Cluster, deadline: float) -> None:
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=cluster.env).stdout.strip():
        assert time.time() < deadline, "jobs still queued"
        time.sleep(1)


def reused_stages(tmp: Path) -> dict[str, set[str]]:
    """Per variant (by its job number), the stages its last outcome answered from the cache."""
    outcomes = (tmp / "cache" / "sweeps" / tmp.name / "outcomes").glob("*.json")
    return {path.stem.split("-", 1)[0]: {stage["stage"] for stage in json.loads(path.read_text())["stages"]
                                         if stage["from_cache"]} for path in outcomes}


@pytest.mark.slow
def test_scancel_mid_evaluation_then_rerun_completes_with_nothing_lost(cluster, tmp_path):
    # 300 items per suite: the base's evaluation (SIGTERM unwinds it) lasts well past the poll and scancel.
    command = sweep_command(cluster, tmp_path, "fp8,w8a8", "eval.limit=300")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=cluster.env, cwd=tmp_path)
    try:
        job = _job_evaluating_base(tmp_path / "multirun", time.time() + 600)
        subprocess.run(["scancel", job], env=cluster.env, check=True)
        first_output = first.communicate(timeout=900)[0]
    finally:
        first.kill()
    assert first.returncode == 3, first_output[-3000:]  # the cancelled variant failed; not a verdict
    assert f"FAILED ({sweep.NO_RESULT})" in first_output
    assert sacct_states(cluster)[job].startswith("CANCELLED")  # "CANCELLED by 0"
    _wait_until_queue_empty(cluster, time.time() + 600)  # the launcher stops waiting at the first failed job
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%t %E"], capture_output=True, text=True, env=cluster.env)
    assert node.stdout.startswith("idle"), f"the node did not return to service after scancel: {node.stdout}"
    assert base_evaluations(tmp_path) == 1  # the other job took the lock and evaluated the base itself

    rerun = subprocess.run(command, capture_output=True, text=True, env=cluster.env, cwd=tmp_path, timeout=900)
    parents, children = sweep_runs(cluster, tmp_path.name)
    assert sorted(r.data.tags["quantgate.quant"] for r in children) == ["fp8", "w8a8"]
    assert all(run.info.status == "FINISHED" for run in children)
    assert rerun.returncode in (0, 1), rerun.stderr[-3000:]
    cancelled, survivor = job.split("_")[1], {"0": "1", "1": "0"}[job.split("_")[1]]
    reused = reused_stages(tmp_path)
    # Nothing lost: everything that finished is reused (the base's evaluation by both, the cancelled
    # job's quantization, the survivor's whole run); the half-written evaluation was not trusted.
    assert base_evaluations(tmp_path) == 0
    assert {"quantize", "evaluate"} <= reused[survivor]
    assert "quantize" in reused[cancelled] and "evaluate" not in reused[cancelled]


def test_a_variant_whose_job_left_no_outcome_is_reported_failed():
    """A job SLURM cancelled writes no outcome: the sweep reports that variant FAILED (exit 3), in
    config order after the others, and keeps the outcomes that exist (two variants of one name too)."""
    from types import SimpleNamespace

    from pipelines.records import Outcome

    configs = [SimpleNamespace(quant=SimpleNamespace(name=name), model=SimpleNamespace(name="tiny"))
               for name in ("fp8", "fp8", "w8a8")]
    written = [Outcome("fp8", "tiny", exit_code=1)]
    outcomes = sweep.with_missing(written, configs)
    assert [(o.variant_name, o.exit_code, o.error) for o in outcomes] == [
        ("fp8", 1, None), ("fp8", 3, sweep.NO_RESULT), ("w8a8", 3, sweep.NO_RESULT)]


def test_slurm_launcher_config_sets_resources_and_threads():
    """hydra/launcher=slurm is submitit's SLURM launcher with the resources from its YAML, each
    overridable, and torch's threads set to the CPUs SLURM grants."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from pipelines.config import register_schemas

    register_schemas()
    overrides = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=4", "hydra.launcher.partition=gpu"]
    with initialize_config_module(config_module="pipelines.conf", version_base="1.3"):
        launcher = compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
        resolved = OmegaConf.to_container(launcher, resolve=True)
    assert resolved["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (resolved["cpus_per_task"], resolved["partition"], resolved["mem_gb"]) == (4, "gpu", 6)
    assert resolved["setup"] == ["export OMP_NUM_THREADS=4"]
