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


def test_a_backends_own_dict_field_takes_new_keys():
    (cfg,) = compose_all(["serve=vllm", "+serve.env.VLLM_CPU_KVCACHE_SPACE=2"])
    assert cfg.serve.env == {"VLLM_CPU_KVCACHE_SPACE": "2"}


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


@pytest.fixture
def user_conf(tmp_path):
    """A user's own config folder outside the repo: one eval config and one gate policy."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "gate").mkdir()
    (tmp_path / "eval" / "mine.yaml").write_text("defaults: [eval_schema]\nname: mine\ntasks: [qg_invoice_total]\n")
    (tmp_path / "gate" / "mine.yaml").write_text("defaults: [gate_schema]\nname: mine\nmax_flip_rate: 0.2\n")
    return tmp_path


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_user_config_folder_outside_the_repo_works_for_every_group(user_conf, how):
    where = ["--config-dir", str(user_conf)] if how == "--config-dir" else [f"hydra.searchpath=[file://{user_conf}]"]
    (cfg,) = compose_all([*where, "eval=mine", "gate=mine"])
    assert (cfg.eval.name, cfg.eval.tasks, cfg.gate.name, cfg.gate.max_flip_rate) == ("mine", ["qg_invoice_total"],
                                                                                        "mine", 0.2)
    assert compose_all(where)[0].eval.name == "domain"  # the package's own configs are still found


def test_missing_config_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="--config-dir"):
        compose_all(["--config-dir", str(tmp_path / "nope"), "eval=mine"])
