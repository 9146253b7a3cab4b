"""The whole pipeline through the real CLI: a sweep on the embedded model, then reliability on a
tiny model (resume after SIGKILL, byte-identical re-runs, secrets never logged)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cli_command

pytestmark = pytest.mark.slow

# Small load levels: the CLI path is what is tested here; BENCHMARKS.md has the real scenario.
FAST_BENCH = ["bench.batch_sizes=[1,2]", "bench.requests_per_level=2", "bench.repeats=2",
              "bench.warmup_requests=1", "bench.output_tokens=8", "bench.input_tokens=16"]


def cli(args: list[str], tmp: Path, timeout: int = 900, **popen) -> subprocess.CompletedProcess:
    command, env = cli_command(args, tmp)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp, **popen)


def mlflow_runs(tmp: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quantgate")
    return client, client.search_runs([experiment.experiment_id])


def test_sweep_on_embedded_model_gates_and_logs(tmp_path):
    args = ["-m", "quant=none,fp8,canary-w2", "eval=quick", "sweep=e2e", *FAST_BENCH]
    result = cli(args, tmp_path)
    client, runs = mlflow_runs(tmp_path)
    parent = [r for r in runs if r.data.tags.get("quantgate.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    verdicts = {r.data.tags["quantgate.quant"]: r.data.tags["quantgate.verdict"] for r in children}
    assert len(parent) == 1 and set(verdicts) == {"none", "fp8", "canary-w2"}
    # The base compared with itself: no flip in 100 items bounds the drop at 3.7 points (Tango),
    # which does not certify the 2-point tolerance; on the full suites (600 items) it PROMOTEs.
    assert verdicts["none"] == "INCONCLUSIVE"
    assert verdicts["canary-w2"] == "REJECT"  # the suites see 2-bit damage
    assert result.returncode == 1, result.stderr[-3000:]  # a sweep exits with its worst verdict's code
    for run in children:
        # Cost is reported whatever the machine's speed: at the knee, or flagged at the best load (slo_met 0).
        assert {"gate/decision", "gate/exit_code", "fidelity/qg_policy_route/mcnemar_p", "cost/usd_per_1m_tokens",
                "cost/slo_met", "bench/conditions/load_avg_before"} <= set(run.data.metrics)
    # Base and fp8 timed in one paired run: fp8's ratios vs the base; the base has none against itself.
    by_quant = {r.data.tags["quantgate.quant"]: r.data.metrics for r in children}
    assert {"bench/bs1/vs_base/output_tokens_per_s_ratio", "cost/saving_vs_base"} <= set(by_quant["fp8"])
    assert "bench/bs1/vs_base/output_tokens_per_s_ratio" not in by_quant["none"]
    report = tmp_path / "cache" / "sweeps" / "e2e" / "report"
    assert any(report.glob("*.png")) and any(report.glob("*.md"))
    assert "canary-w2" in result.stdout and "REJECT" in result.stdout

    evaluations = "[pipelines.evaluate][INFO] - evaluating "
    assert result.stdout.count(evaluations) == 3  # the base once, then fp8 and the canary: N+1 for N=2
    rerun = cli(args, tmp_path)
    assert rerun.returncode == 1
    assert "reusing cached evaluation" in rerun.stdout and evaluations not in rerun.stdout


def tiny_args(tiny_llama_dir: Path) -> list[str]:
    return [f"model.source={tiny_llama_dir}", "eval.limit=12", "eval.reference_max_tokens=256", "bench=off"]


def fidelity_files(tmp: Path) -> dict[str, str]:
    outcomes = sorted((tmp / "cache" / "sweeps").glob("*/outcomes/*.json"))
    return {path.name: json.dumps(json.loads(path.read_text())["fidelity"], sort_keys=True) for path in outcomes}


def manifests(tmp: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (tmp / "cache").glob("*/*/*/quantgate-manifest.json")}


def stage_manifests(tmp: Path, variant: str) -> dict[str, bool]:
    """Which of a variant's cached stages are complete (a cache directory is complete once its manifest is written)."""
    cache = tmp / "cache"
    evals = [json.loads(p.read_text()).get("model") for p in cache.glob("evals/*/*/quantgate-manifest.json")]
    return {"quantize": any(cache.glob(f"variants/*/{variant}-*/quantgate-manifest.json")),
            "evaluate": variant in evals}


def sweep_outcomes(tmp: Path, sweep: str) -> dict[str, dict]:
    """The sweep's outcome records by variant name, as the finished jobs wrote them."""
    folder = tmp / "cache" / "sweeps" / sweep / "outcomes"
    records = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    return {record["variant_name"]: record for record in records}


def reused(outcome: dict) -> dict[str, bool]:
    """Which of the outcome's cacheable records were read from the cache rather than computed."""
    return {name: outcome[name]["from_cache"] for name in ("variant", "base_eval", "variant_eval")}


def test_killed_sweep_resumes_without_redoing_finished_work(tmp_path, tiny_llama_dir):
    args = ["-m", "quant=fp8,canary-w2", "sweep=resume", *tiny_args(tiny_llama_dir)]
    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    assert cli(args, reference).returncode in (0, 1)

    killed = tmp_path / "killed"
    killed.mkdir()
    command, env = cli_command(args, killed)
    with (killed / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
        # The kill lands on an observable event, not after a delay: the second job has written its
        # quantized checkpoint and is now evaluating it.
        deadline = time.monotonic() + 900  # a hang guard only
        while not stage_manifests(killed, "canary-w2")["quantize"] and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"the sweep ended before the kill: {(killed / 'stderr.txt').read_text()[-3000:]}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Mid-work: the first job finished, the second had quantized but not evaluated its variant.
    assert set(sweep_outcomes(killed, "resume")) == {"fp8"}
    assert stage_manifests(killed, "fp8") == {"quantize": True, "evaluate": True}
    assert stage_manifests(killed, "canary-w2") == {"quantize": True, "evaluate": False}
    finished = manifests(killed)

    resumed = cli(args, killed)
    assert resumed.returncode in (0, 1), resumed.stderr[-3000:]
    # The rerun redid exactly the interrupted evaluation and reused everything finished before the kill.
    outcomes = sweep_outcomes(killed, "resume")
    assert reused(outcomes["fp8"]) == {"variant": True, "base_eval": True, "variant_eval": True}
    assert reused(outcomes["canary-w2"]) == {"variant": True, "base_eval": True, "variant_eval": False}
    assert stage_manifests(killed, "canary-w2") == {"quantize": True, "evaluate": True}
    assert all(manifests(killed)[path] == mtime for path, mtime in finished.items())
    assert fidelity_files(killed) == fidelity_files(reference)


def test_same_config_twice_gives_byte_identical_fidelity(tmp_path, tiny_llama_dir):
    from pipelines.pipeline import compose_config, run_variant
    from pipelines.records import save_record

    texts = []
    for attempt in ("first", "second"):
        cfg = compose_config(["quant=fp8", "tracking=off", f"cache_dir={tmp_path / attempt}",
                              *tiny_args(tiny_llama_dir)])
        outcome = run_variant(cfg, output_dir=tmp_path / attempt / "run")
        texts.append(save_record(outcome.fidelity, tmp_path / attempt / "fidelity.json").read_bytes())
    assert texts[0] == texts[1]


def test_parallel_sweep_with_joblib_launcher(tmp_path, tiny_llama_dir):
    """Jobs in separate processes share one parent run and one SQLite store without corrupting it."""
    args = ["-m", "quant=fp8,canary-w2", "sweep=parallel", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            *tiny_args(tiny_llama_dir)]
    result = cli(args, tmp_path)
    client, runs = mlflow_runs(tmp_path)
    parent = [r for r in runs if r.data.tags.get("quantgate.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and sorted(r.data.tags["quantgate.quant"] for r in children) == ["canary-w2", "fp8"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert len(fidelity_files(tmp_path)) == 2, result.stderr[-3000:]
    # The exit code is the verdicts' (a job that crashed after its MLflow run finished once passed as "1").
    assert result.returncode == max(int(r.data.tags["quantgate.exit_code"]) for r in children), result.stderr[-3000:]


def test_sweep_with_submitit_local_launcher(tmp_path, tiny_llama_dir):
    """The cluster path README documents for SLURM, run locally: jobs are pickled into separate
    processes by submitit, share one parent run, and the command exits with the gate's code."""
    args = ["-m", "quant=fp8,canary-w2", "sweep=submitit", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=20", *tiny_args(tiny_llama_dir)]
    result = cli(args, tmp_path)
    client, runs = mlflow_runs(tmp_path)
    parent = [r for r in runs if r.data.tags.get("quantgate.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and sorted(r.data.tags["quantgate.quant"] for r in children) == ["canary-w2", "fp8"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert any((tmp_path / "multirun").glob("**/.submitit/*/*_submitted.pkl"))  # submitit really ran the jobs
    verdicts = {r.data.tags["quantgate.verdict"] for r in children}
    assert result.returncode == (0 if verdicts == {"PROMOTE"} else 1), result.stderr[-3000:]
    # After every job: one champion (or none), the alias on it, and the report's path as the last line.
    report = tmp_path / "cache" / "sweeps" / "submitit" / "report"
    champion = json.loads((report / "summary.json").read_text())["champions"][0]["champion"]
    assert (champion is None) == ("PROMOTE" not in verdicts)
    if champion:
        alias = client.get_model_version_by_alias("tiny-llama", "candidate")
        assert alias.tags["quantgate.variant"] == champion and alias.tags["quantgate.champion.policy"] == "cheapest"
    assert result.stdout.rstrip().endswith(f"report: {report / 'index.html'}")
