"""Console or run.log: the console shows quantgate's own log lines, its errors and the progress
bars; library chatter (lm-eval task loading, llm-compressor's "No accelerator available!",
torchao, Python warnings) goes to the run's `run.log` only. Every handler redacts secrets
(pipelines/redact.py); tracebacks reach the console only with debug=true.

`python -m pipelines.run` uses it through conf/hydra/job_logging/quantgate.yaml (the console
filter) and pipelines/run.py (records from before Hydra has a run directory are kept and replayed
into run.log). Checked by tests/test_new_user.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from logging.handlers import MemoryHandler
from typing import Iterator

from pipelines.redact import RedactSecrets, redact

OWN_LOGGERS = ("pipelines", "__main__")
# Records logged before Hydra opens run.log (config composition, preflight): at most this many are kept.
EARLY_CAPACITY = 10_000
_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
DEBUG_ENV = "QUANTGATE_DEBUG"


class OwnRecordsOnly(logging.Filter):
    """Console filter: quantgate's records pass; every library's stay in run.log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OWN_LOGGERS


class ConsoleFormatter(logging.Formatter):
    """The console's lines without tracebacks (run.log keeps them), unless the command has debug=true."""

    def format(self, record: logging.LogRecord) -> str:
        if os.environ.get(DEBUG_ENV) == "1":
            return super().format(record)
        kept = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = kept


def show_tracebacks(debug: bool) -> None:
    """debug=true: tracebacks on the console too, in this process and the jobs it starts."""
    os.environ[DEBUG_ENV] = "1" if debug else "0"


class _Buffer(MemoryHandler):
    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False  # kept until replay_early_records; beyond capacity the oldest are dropped

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.buffer) >= self.capacity:
            self.buffer.pop(0)
        self.buffer.append(record)


_early = _Buffer(capacity=EARLY_CAPACITY)
_early.addFilter(RedactSecrets())  # kept records are replayed into run.log: redacted before they are kept


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and redirections replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _RedactingStream:
    """sys.stdout / sys.stderr for the command's duration: what libraries print (a URL with its
    password, a key in their arguments) leaves redacted too."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding: the real stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def redacted_console() -> Iterator[None]:
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _RedactingStream(stdout), _RedactingStream(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def capture_early() -> None:
    """Before Hydra configures logging: our warnings to the console, every record kept for run.log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if isinstance(h, _CurrentStderr)]:
        root.removeHandler(handler)  # one console handler however often main() runs in a process
    console = _CurrentStderr()
    console.setLevel(logging.WARNING)
    console.addFilter(OwnRecordsOnly())
    console.setFormatter(ConsoleFormatter(_FORMAT))
    console.addFilter(RedactSecrets())
    for handler in (_early, console):
        root.addHandler(handler)
    logging.captureWarnings(True)


def replay_early_records() -> None:
    """Write what `capture_early` kept into the job's log file(s), once Hydra has opened them."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for record in _early.buffer if files else []:
        for handler in files:
            if record.levelno >= handler.level:
                handler.handle(record)
    _early.buffer.clear()
    logging.captureWarnings(True)


@contextlib.contextmanager
def library_output_to_log(name: str) -> Iterator[None]:
    """Around an import or load that may first import llm-compressor or compressed-tensors: what they
    print while importing (loguru sinks bound to stdout) goes to the `name` logger, then loguru is
    routed to `logging` for good."""
    with contextlib.redirect_stdout(_LogWriter(name)):
        yield
    route_library_logs()


class _LogWriter(io.TextIOBase):
    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.logger.info(line.rstrip())
        return len(text)


# Libraries that give their loggers their own stderr handler and stop them propagating.
SELF_HANDLED_LOGGERS = ("torch", "transformers", "mlflow")


def adopt_library_logs() -> None:
    """torch, transformers and MLflow give their loggers their own stderr handler and stop them
    propagating; call after importing them so that their (and torchao's) warnings and notices reach
    run.log instead of the console."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (name.split(".")[0] in SELF_HANDLED_LOGGERS and isinstance(logger, logging.Logger)
                and not logger.propagate):
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True


def route_library_logs() -> None:
    """llm-compressor and compressed-tensors log through loguru straight to stdout, and reset its
    sinks when imported: call after importing them, so their lines reach `logging` (run.log)."""
    if "loguru" not in sys.modules:
        return
    from loguru import logger

    logger.remove()
    logger.add(_to_logging, level="INFO", format="{message}")


def _to_logging(message) -> None:
    record = message.record
    logging.getLogger(record["name"] or "loguru").log(record["level"].no, record["message"])
