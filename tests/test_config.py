"""Every option of every config group composes and validates; bad values are one-line errors."""

from __future__ import annotations

import subprocess
import sys
from importlib.resources import files

import pytest

from pipelines.cli import compose_all
from pipelines.config import GROUPS, RunConfig
from pipelines.errors import ConfigError

CONF = files("pipelines.conf")


def group_options(group: str) -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_composes_and_validates(group, option):
    (cfg,) = compose_all([f"{group}={option}"])
    assert isinstance(cfg, RunConfig)
    assert getattr(cfg, group).name == option


def test_sweep_expands_to_one_config_per_value():
    configs = compose_all(["-m", "quant=fp8,awq,gptq"])
    assert [c.quant.name for c in configs] == ["fp8", "awq", "gptq"]


@pytest.mark.parametrize("overrides,expected", [
    (["quant=nonsense"], "unknown quant 'nonsense'"),
    (["model=nonsense"], "unknown model 'nonsense'"),
    (["eval=nope"], "unknown eval 'nope'"),
    (["bench=nope"], "unknown bench 'nope'"),
    (["gate=nope"], "unknown gate 'nope'"),
    (["hardware=nope"], "unknown hardware 'nope'"),
    (["tracking=nope"], "unknown tracking 'nope'"),
    (["quant.bogus=1"], "Key 'bogus' not in 'QuantConfig'"),
    (["quant.calibration.num_samples=0"], "quant.calibration.num_samples=0 must be > 0"),
    (["eval.batch_size=-4"], "eval.batch_size=-4 must be > 0"),
    (["bench.batch_sizes=[0,2]"], "bench.batch_sizes=[0, 2]"),
    (["bench.slo.ttft_p95_ms=0"], "bench.slo.ttft_p95_ms=0.0 must be > 0"),
    (["gate.tolerance.max_drop=1.5"], "gate.tolerance.max_drop=1.5"),
    (["gate.confidence=1.0"], "gate.confidence=1.0"),
    (["eval.tasks=[]"], "eval.tasks is empty"),
])
def test_bad_values_name_the_offending_value(overrides, expected):
    with pytest.raises(ConfigError, match=None) as error:
        compose_all(overrides)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_cfg_job_does_not_import_torch():
    code = ("import sys; sys.argv=['run','--cfg','job','quant=awq'];"
            "from pipelines import run\n"
            "try: run.main()\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "scheme: W4A16" in result.stdout


def test_cli_unknown_quant_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "-m", "pipelines.run", "quant=nonsense"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "valid choices: awq, canary-w2, fp8, gptq, none, w8a8" in lines[0]
    assert "Traceback" not in result.stderr
