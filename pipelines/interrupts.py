"""Ctrl-C and SIGTERM (what cluster schedulers send before killing a job): one line, no traceback.

    quantgate: interrupted during evaluate; run the same command to resume

Exit code 130 for SIGINT, 143 for SIGTERM (pipelines/exit_codes.py). SIGTERM is
turned into a KeyboardInterrupt subclass, so every cleanup path that already handles Ctrl-C
(atomic_directory removing a partial checkpoint, MLflow runs marked FAILED) handles it too.
Whatever a stage finished is cached, so the rerun resumes after it. `debug=true` keeps the traceback
(pipelines/cli.py `report_failure` prints the line).
Exercised by `python -m pipelines.run` and tests/test_new_user.py (a real signal to a subprocess).
"""

from __future__ import annotations

import signal

_stage = "startup"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, like Ctrl-C's KeyboardInterrupt."""


def entering(stage: str) -> None:
    """Name the stage now running: what an interrupt message says was cut short."""
    global _stage
    _stage = stage


def current_stage() -> str:
    return _stage


def message() -> str:
    return f"interrupted during {_stage}; run the same command to resume"


def install() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()
