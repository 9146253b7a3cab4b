"""Exit codes mean what README says (issue 27 item 2, issue 25 item 1): 1 only for a verdict; every
failure before the gate is 2 (input, one line saying what to fix) or 3 (a failure, one line and the
log holding its traceback); the records carry the code the process returns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import ConfigKeyError

from pipelines import exit_codes, pipeline, run, sweep
from pipelines.config import GateConfig
from pipelines.errors import ConfigError, InputError, UserError
from pipelines.interrupts import Terminated
from pipelines.records import Outcome, Verdict
from pipelines.track.mlflow_tracker import _retry

# Every failure class a command can end with, and its code.
FAILURE_CLASSES = [
    (UserError("x"), 2), (ConfigError("x"), 2), (InputError("x"), 2),
    (HydraException("x"), 2), (OverrideParseException("x", "x"), 2), (ConfigKeyError("x"), 2),
    (KeyboardInterrupt(), 130), (Terminated(), 143),
    (RuntimeError("x"), 3), (ZeroDivisionError("x"), 3), (OSError("x"), 3), (ValueError("x"), 3),
]


@pytest.mark.parametrize("error,code", FAILURE_CLASSES, ids=[type(e).__name__ for e, _ in FAILURE_CLASSES])
def test_every_failure_class_has_its_code(error, code):
    assert exit_codes.of_exception(error) == code


@pytest.mark.parametrize("decision,error,blocks,code", [
    ("PROMOTE", None, True, 0), ("REJECT", None, False, 1), ("INCONCLUSIVE", None, True, 1),
    ("INCONCLUSIVE", None, False, 0), ("PROMOTE", "track: boom", True, 3), (None, "evaluate: boom", True, 3)])
def test_outcome_code_is_its_verdict_unless_a_stage_failed(decision, error, blocks, code):
    verdict = Verdict(variant="v", decision=decision, rules=[], reasons=[]) if decision else None
    outcome = Outcome(variant_name="v", model="m", verdict=verdict, error=error)
    assert exit_codes.of_outcome(outcome, GateConfig(name="g", inconclusive_blocks=blocks)) == code


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    """The CLI sets these for the jobs it starts; put them back afterwards."""
    for name in (sweep.SWEEP_DIR_ENV, sweep.PARENT_ENV, "HYDRA_FULL_ERROR", "QUANTGATE_DEBUG"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def cli(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["pipelines.run", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run.main()
    return exit_info.value.code


def malformed_model(tmp_path: Path) -> Path:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"hidden_size": 64,')
    return tmp_path / "bad"


# The cases issue 27 found ending in a traceback and exit 1.
BAD_INPUTS = {
    "unbalanced-override": (["eval.tasks=[qg_domain"], "cannot parse the overrides"),
    "unquoted-space": (["model.source=/my", "models"], "cannot parse the overrides"),
    "empty-source": (["model.source="], "model.source is empty"),
    "malformed-config-json": (["model.source={bad}"], "is not valid JSON"),
    "malformed-config-json-plan": (["model.source={bad}", "plan=true"], "is not valid JSON"),
    "unwritable-run-dir": (["hydra.run.dir={bad}/config.json/run"], "hydra.run.dir="),
    "unwritable-sweep-dir": (["-m", "quant=fp8,w8a8", "hydra.sweep.dir={bad}/config.json/x"], "hydra.sweep.dir="),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(case, clean_env, tmp_path, monkeypatch, capsys):
    bad = malformed_model(tmp_path)
    overrides, expected = BAD_INPUTS[case]
    code = cli(monkeypatch, *[o.format(bad=bad) for o in overrides], "tracking=off", f"cache_dir={tmp_path / 'c'}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert "Traceback" not in err


def test_a_crash_exits_3_with_one_line_and_the_log_holding_its_traceback(clean_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "preflight_all", lambda configs: None)
    monkeypatch.setattr(pipeline, "run_variant", _raise(RuntimeError("boom")))
    code = cli(monkeypatch, "tracking=off", f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and "Traceback" not in "\n".join(err)
    assert err[-1] == f"quantgate: failed: RuntimeError: boom; traceback in {tmp_path / 'run' / 'run.log'}"
    assert "Traceback" in (tmp_path / "run" / "run.log").read_text()


@pytest.mark.parametrize("failures,code", [({"fp8": InputError("no such suite"), "w8a8": InputError("bad file")}, 2),
                                           ({"fp8": InputError("no such suite"), "w8a8": RuntimeError("boom")}, 3)])
def test_a_sweep_records_each_failed_job_with_its_code_and_goes_on(failures, code, clean_env, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "preflight_all", lambda configs: None)
    monkeypatch.setattr(pipeline, "_run_stages", lambda cfg, output_dir, evaluator: _raise(failures[cfg.quant.name])())
    assert cli(monkeypatch, "-m", "quant=fp8,w8a8", "tracking=off", "sweep=codes", f"cache_dir={tmp_path / 'c'}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}") == code
    recorded = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "c" / "sweeps" / "codes" / "outcomes").glob("*")}
    assert {name: o["exit_code"] for name, o in recorded.items()} == {
        "0-fp8": 2, "1-w8a8": exit_codes.of_exception(failures["w8a8"])}
    # Invalid input inside a job still leaves its folder a record agreeing with the process.
    assert json.loads((tmp_path / "multirun" / "0-fp8" / "outcome.json").read_text())["exit_code"] == 2


def test_a_tracker_failure_is_exit_3_in_every_record(tmp_path, monkeypatch):
    from pipelines import track

    class BrokenTracker:
        def log_outcome(self, *args, **kwargs):
            raise RuntimeError("store gone")

    promoted = Outcome(variant_name="fp8", model="tiny-llama",
                       verdict=Verdict(variant="fp8", decision="PROMOTE", rules=[], reasons=[]))
    monkeypatch.setattr(pipeline, "_run_stages", lambda cfg, output_dir, evaluator: promoted)
    monkeypatch.setattr(track, "make_tracker", lambda tracking: BrokenTracker())
    cfg = pipeline.compose_config([f"cache_dir={tmp_path}"])
    outcome = pipeline.run_variant(cfg, tmp_path / "run", preflighted=True)
    saved = json.loads((tmp_path / "run" / "outcome.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert outcome.exit_code == saved["exit_code"] == summary["exit_code"] == 3
    assert saved["error"] == "track: RuntimeError: store gone" and saved["verdict"]["decision"] == "PROMOTE"


def test_a_lost_sqlite_upsert_race_is_retried(monkeypatch):
    """What lost a joblib sweep job's outcome: MLflow sets a tag by select-then-insert, so two jobs
    setting the experiment's view tag at once both insert; the loser must retry, not crash."""
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    calls = []

    def set_tag():
        calls.append(1)
        if len(calls) == 1:
            raise Exception("(sqlite3.IntegrityError) UNIQUE constraint failed: experiment_tags.key")
        return "set"

    assert _retry(set_tag) == "set" and len(calls) == 2


def _raise(error: BaseException):
    def raiser(*args, **kwargs):
        raise error

    return raiser

