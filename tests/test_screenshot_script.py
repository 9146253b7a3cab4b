"""benchmarks/mlflow_ui_screenshot.py starts its MLflow server in a temporary directory: README's
`--store sqlite:///mlruns/mlflow.db` must still name the database under the current directory.

python -m pytest tests/test_screenshot_script.py -q
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mlflow_ui_screenshot.py"


@pytest.fixture(scope="module")
def screenshot():
    spec = importlib.util.spec_from_file_location("mlflow_ui_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_server_gets_the_relative_sqlite_store_resolved_against_the_callers_directory(screenshot, tmp_path,
                                                                                       monkeypatch):
    started = []
    monkeypatch.setattr(screenshot.subprocess, "Popen", lambda command, **kwargs: started.append((command, kwargs)))
    monkeypatch.chdir(tmp_path)
    screenshot.start_server("sqlite:///mlruns/mlflow.db", 5001, tmp_path / "server-dir")
    command, kwargs = started[0]
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert kwargs["cwd"] == tmp_path / "server-dir"


@pytest.mark.parametrize("store", ["sqlite:////abs/mlflow.db", "http://127.0.0.1:5000", "postgresql://u@h/db"])
def test_absolute_and_remote_stores_are_passed_unchanged(screenshot, store):
    assert screenshot.absolute_store(store) == store
