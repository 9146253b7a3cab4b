"""Validate once, up front (issue 14): one compose and one preflight per config of a command, and
every check the issue names fails through the CLI before any model is loaded, creating nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl

from pipelines import exit_codes, models, preflight, run, sweep
from pipelines.pipeline import compose_config, run_variant

# Each check the issue found running only inside a stage, after quantization and evaluation.
LATE_CHECKS = [
    ("bench-output-tokens-below-2", ["bench.output_tokens=1"], "bench.output_tokens=1"),
    ("unknown-eval-runner", ["eval.runner=hff"], "unknown eval runner 'hff'"),
    ("unknown-bench-engine", ["bench.engine=hff"], "unknown bench engine 'hff'"),
    ("bad-eval-params", ["+eval.params.bootstrap_iter=10"], "did you mean 'bootstrap_iters'"),
    ("bad-bench-params", ["+bench.params.num_thread=2"], "bench.params ['num_thread']"),
    ("bad-project-to", ["hardware.project_to=[h100,h300]"], "hardware in hardware.project_to 'h300'"),
    ("missing-price", ["hardware.price_tier=spot", "hardware.price_per_hour.spot=null"], "no spot price"),
]


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture()
def spies(monkeypatch):
    """Counts composes (every Hydra compose goes through load_configuration) and preflights; any model
    load fails the test, and stopping at the base load ends a good run right after its checks."""
    composes = Counter(ConfigLoaderImpl.load_configuration)
    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration",
                        lambda self, *args, **kwargs: composes(self, *args, **kwargs))
    preflights = Counter(preflight.preflight)
    monkeypatch.setattr(preflight, "preflight", preflights)
    loads = []

    def no_model(model_cfg):
        loads.append(model_cfg.name)
        raise RuntimeError("stopped before loading the base")

    monkeypatch.setattr(models, "resolve_base", no_model)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in (sweep.SWEEP_DIR_ENV, sweep.PARENT_ENV):  # a sweep sets them: gone again after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return composes, preflights, loads


def cli(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["pipelines.run", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run.main()
    return exit_info.value.code


def files_under(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots if root.exists() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case,overrides,expected", LATE_CHECKS, ids=[c[0] for c in LATE_CHECKS])
def test_check_fails_before_any_model_is_loaded_and_creates_nothing(case, overrides, expected, spies, tmp_path,
                                                                      monkeypatch, capsys):
    composes, preflights, loads = spies
    cache, store, outputs = tmp_path / "cache", tmp_path / "mlruns", tmp_path / "outputs"
    code = cli(monkeypatch, *overrides, f"cache_dir={cache}", f"tracking.uri=sqlite:///{store}/mlflow.db",
               f"hydra.run.dir={outputs}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert loads == [], "a model was loaded before the check"
    # No checkpoint, evaluation, benchmark, MLflow run or run directory.
    assert files_under(cache, store, outputs) == []
    assert composes.calls == 1  # a bad-input run composes its config once
    assert preflights.calls <= 1


def test_cfg_job_composes_once(spies, monkeypatch, capsys):
    composes, preflights, _ = spies
    monkeypatch.setattr(sys, "argv", ["pipelines.run", "--cfg", "job", "quant=w8a8"])
    try:
        run.main()
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    assert "name: w8a8" in capsys.readouterr().out
    assert composes.calls == 1 and preflights.calls == 0


@pytest.mark.slow  # a full preflight: lm-eval loads and checks every suite item
def test_single_run_composes_once_and_preflights_once(spies, tmp_path, monkeypatch, capsys):
    composes, preflights, loads = spies
    code = cli(monkeypatch, "bench=off", "tracking=off", f"cache_dir={tmp_path / 'cache'}",
               f"hydra.run.dir={tmp_path / 'run'}")
    # The job ran (from the config composed up front) and stopped at the base load: a failed stage.
    assert code == exit_codes.STAGE_FAILED and loads == ["tiny-llama"]
    assert "stopped before loading the base" in (tmp_path / "run" / "outcome.json").read_text()
    assert (tmp_path / "run" / "run.log").is_file()  # Hydra's job logging, as under @hydra.main
    assert composes.calls == 1 and preflights.calls == 1


@pytest.mark.slow  # a full preflight: lm-eval loads and checks every suite item
def test_sweep_preflights_each_config_once(spies, tmp_path, monkeypatch, capsys):
    _, preflights, loads = spies
    code = cli(monkeypatch, "-m", "quant=none,fp8", "bench=off", "tracking=off", f"cache_dir={tmp_path / 'cache'}",
               f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == exit_codes.STAGE_FAILED and loads == ["tiny-llama", "tiny-llama"]
    assert preflights.calls == 2  # by the CLI, once per variant; the jobs trust it


@pytest.mark.slow  # a full preflight: lm-eval loads and checks every suite item
def test_python_api_preflights_exactly_once(spies, tmp_path):
    _, preflights, loads = spies
    cfg = compose_config(["bench=off", "tracking=off", f"cache_dir={tmp_path}"])
    outcome = run_variant(cfg, tmp_path / "run")
    assert preflights.calls == 1 and loads == ["tiny-llama"]
    assert outcome.error == "load base: RuntimeError: stopped before loading the base"
    assert outcome.stages == []  # nothing ran past the base load
