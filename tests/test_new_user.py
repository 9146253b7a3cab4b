"""What a new user tripped on (issue 16), through the real CLI on a tiny model with a user's own
config folder kept outside the repo: the exit code every record states, configs found through
`--config-dir` and `hydra.searchpath`, a console free of library chatter, group-readable files,
and Ctrl-C / SIGTERM ending in one line. (Bad-input cases: tests/test_bad_inputs.py.)

nice -n 10 python -m pytest tests/test_new_user.py -q
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys

import pytest

from conftest import interruptible
from test_bad_inputs import GOOD_ROW, write_suite

pytestmark = pytest.mark.slow

LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[([\w.]+)\]\[\w+\] - ")
INTERRUPTED_LINE = "quantgate: interrupted during evaluate; run the same command to resume"


@pytest.fixture(scope="module")
def user(tmp_path_factory, tiny_llama_dir):
    """A user's own folder: a suite, an eval config naming it, and two gate policies."""
    root = tmp_path_factory.mktemp("new-user")
    suite = write_suite(root / "suites", [GOOD_ROW, {**GOOD_ROW, "answer": 1}] * 4)
    configs = root / "myconf"
    (configs / "eval").mkdir(parents=True)
    (configs / "gate").mkdir()
    (configs / "eval" / "probe.yaml").write_text(
        f"defaults: [eval_schema]\nname: probe\ntasks: [qg_probe]\ninclude_path: {suite}\n"
        "reference_max_tokens: 2048\nbootstrap_samples: 1000\n")
    # Any divergence at all rejects: the fp8 variant is REJECTed by its reference-text KL (2048 tokens
    # make the 64 blocks the KL bootstrap needs; with fewer than 50 the rule is INCONCLUSIVE).
    (configs / "gate" / "kl_zero.yaml").write_text(
        "defaults: [gate_schema]\nname: kl_zero\nmax_kl: 0.0\nblocking: [kl]\n")
    # A zero-point tolerance: the base against itself (delta exactly 0) sits at it, INCONCLUSIVE.
    (configs / "gate" / "at_tolerance.yaml").write_text(
        "defaults: [gate_schema]\nname: at_tolerance\ntolerance: {max_drop: 0.0, kind: absolute}\n"
        "blocking: [accuracy]\ninconclusive_blocks: false\n")
    return {"root": root, "configs": configs, "model": tiny_llama_dir}


def command(user: dict, name: str, *args: str) -> list[str]:
    root = user["root"]
    return [sys.executable, "-m", "pipelines.run", *args, f"model.source={user['model']}", "bench=off",
            f"cache_dir={root / 'cache'}", f"tracking.uri=sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            f"tracking.artifact_location={root / 'mlruns' / 'artifacts'}", f"hydra.run.dir={root / name}"]


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def cli(user: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(user, name, *args), capture_output=True, text=True, timeout=1200,
                          env=environment(), cwd=user["root"], preexec_fn=lambda: os.umask(0o022))


@pytest.fixture(scope="module")
def rejected(user):
    """fp8 REJECTed by a gate policy from the user's folder, found through --config-dir."""
    return cli(user, "rejected", "--config-dir", str(user["configs"]), "quant=fp8", "eval=probe", "gate=kl_zero")


def mlflow_run(user: dict, variant: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{user['root'] / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quantgate")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return next(r for r in runs if r.data.tags.get("quantgate.variant") == variant)


def test_reject_records_exit_code_1_everywhere(user, rejected):
    assert rejected.returncode == 1, rejected.stderr[-3000:]
    outcome = json.loads((user["root"] / "rejected" / "outcome.json").read_text())
    summary = json.loads((user["root"] / "rejected" / "summary.json").read_text())
    assert outcome["verdict"]["decision"] == summary["decision"] == "REJECT"
    assert outcome["exit_code"] == summary["exit_code"] == 1
    run = mlflow_run(user, "fp8")
    assert run.data.tags["quantgate.exit_code"] == "1" and run.data.metrics["gate/exit_code"] == 1.0
    assert run.data.tags["quantgate.policy"] == "kl_zero"


@pytest.mark.parametrize("blocks,code", [(False, 0), (True, 1)])
def test_inconclusive_exit_code_follows_policy_and_searchpath_finds_user_configs(user, rejected, blocks, code):
    name = f"inconclusive-{blocks}"
    result = cli(user, name, f"hydra.searchpath=[file://{user['configs']}]", "quant=none", "eval=probe",
                 "gate=at_tolerance", f"gate.inconclusive_blocks={str(blocks).lower()}")
    assert result.returncode == code, result.stderr[-3000:]
    outcome = json.loads((user["root"] / name / "outcome.json").read_text())
    summary = json.loads((user["root"] / name / "summary.json").read_text())
    assert outcome["verdict"]["decision"] == "INCONCLUSIVE"
    assert outcome["exit_code"] == summary["exit_code"] == code


def test_console_shows_no_library_chatter_and_run_log_keeps_it(user, rejected):
    console = rejected.stdout.splitlines() + rejected.stderr.splitlines()
    loggers = {match.group(1).split(".")[0] for line in console if (match := LOG_LINE.match(line))}
    assert loggers == {"pipelines"}, loggers
    for chatter in ("No accelerator available", "Custom kwargs", "torchao", "Building contexts", "[transformers]",
                    "mlflow.store"):
        assert chatter not in rejected.stdout + rejected.stderr
    table = rejected.stdout.index("flips r>w/w>r (all tasks)")
    assert len(rejected.stdout[table:].splitlines()) < 24  # the summary is within the last screenful
    run_log = (user["root"] / "rejected" / "run.log").read_text()
    assert "[lm_eval" in run_log and "[pipelines.pipeline]" in run_log


def test_outputs_and_cache_are_group_readable(user, rejected):
    files = [user["root"] / "rejected" / "outcome.json", user["root"] / "rejected" / "summary.json",
             *(user["root"] / "cache").glob("*/*/*/quantgate-manifest.json")]
    directories = [p for p in (user["root"] / "cache").glob("*/*/*") if p.is_dir()]
    assert len(files) > 2 and directories
    for path in files + directories:
        assert path.stat().st_mode & stat.S_IRGRP, f"{path} is {oct(path.stat().st_mode)}"


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_is_one_line_and_leaves_no_finished_looking_output(user, tmp_path, signum, code):
    name = f"interrupted-{code}"
    args = command(user, name, "--config-dir", str(user["configs"]), "quant=none", "eval=probe")
    args = [a if not a.startswith("cache_dir=") else f"cache_dir={tmp_path / 'cache'}" for a in args]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment(), cwd=user["root"], preexec_fn=interruptible)
    for line in process.stdout:  # interrupt once the evaluation has started, not before
        if "evaluating none" in line:
            process.send_signal(signum)
            break
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == INTERRUPTED_LINE
    assert "Traceback" not in stderr
    output = user["root"] / name
    assert not (output / "outcome.json").exists() and not (output / "summary.json").exists()
    assert (output / "INTERRUPTED").read_text().strip() == INTERRUPTED_LINE.removeprefix("quantgate: ")
    assert not list((tmp_path / "cache").glob("evals/*/.*partial")), "a partial evaluation was left behind"


def test_bad_input_after_loading_suites_is_one_line_without_library_chatter(user, tmp_path):
    """The tracking store is checked after the embedded suites load (lm-eval warns while loading them)."""
    from pipelines.serve.process import free_port

    result = subprocess.run(
        [sys.executable, "-m", "pipelines.run", f"model.source={user['model']}", "bench=off",
         f"cache_dir={tmp_path / 'cache'}", f"tracking.uri=http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=600, env=environment(), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
    assert result.stderr.startswith("quantgate: error: tracking.uri=http://127.0.0.1:") and not result.stdout
