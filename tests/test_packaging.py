"""An installed wheel (not the checkout) carries the embedded model, the suites and every config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
from pipelines.embedded import EMBEDDED_MODEL_DIR, CALIBRATION_TEXT, REFERENCE_TEXT
from evalsuites import SUITES_DIR
from pipelines.cli import compose_all
from pipelines.evaluate.suites import check_suites
import pipelines
assert 'site' in pipelines.__file__ or 'target' in pipelines.__file__, pipelines.__file__
assert (EMBEDDED_MODEL_DIR / 'model.safetensors').is_file() and CALIBRATION_TEXT.is_file() and REFERENCE_TEXT.is_file()
(cfg,) = compose_all(['quant=awq'])
check_suites(cfg.eval)
print('ok', SUITES_DIR)
"""


@pytest.mark.slow
def test_wheel_install_finds_model_suites_and_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(REPO)], check=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("quantgate-*.whl"))
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    env = {"PYTHONPATH": str(target), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(target) in result.stdout
