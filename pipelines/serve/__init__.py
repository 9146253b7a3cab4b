"""The serve seam: how a checkpoint is put behind an OpenAI-compatible endpoint for scoring and timing.

    python -m pipelines.run serve=vllm quant=fp8         # vLLM's OpenAI server, one per checkpoint
    python -m pipelines.run serve=endpoint serve.urls.base=http://h:8000/v1 serve.urls.variant=http://h:8001/v1

A backend (registry.SERVERS, conf/serve/*.yaml) implements the `Server` protocol: `check(cfg)` is
the cheap preflight (a backend using servers it did not start adds `check_reachable(cfg)`),
`libraries` the packages whose versions belong in cache keys, and `serve(variant, role, output_dir)`
a context manager yielding the `ServedModel` scoring and benchmarking talk to (None for
`inprocess`: transformers in this process, today's path). Whatever happens inside the `with` (an
exception, Ctrl-C, SIGTERM), the server it started is stopped.
Adding `serve=sglang` is one module here, one YAML in conf/serve/ and one registry line.

Exercised by: pytest tests/test_serve.py
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ContextManager, Protocol

from pipelines import interrupts
from pipelines.config import RunConfig
from pipelines.records import ServedModel, Variant
from pipelines.redact import redact
from pipelines.registry import SERVERS, resolve

# Engine args that name one server instance, not how it computes: left out of cache keys and comparisons.
INSTANCE_ARGS = frozenset({"host", "port", "served_model_name", "model", "api_key"})


class Server(Protocol):
    libraries: tuple[str, ...]

    def __init__(self, cfg: RunConfig) -> None: ...

    @staticmethod
    def check(cfg: RunConfig) -> None:
        """Validate the serve config cheaply (no server started); raise a UserError saying what to fix."""

    def serve(self, variant: Variant, role: str, output_dir: Path) -> ContextManager[ServedModel | None]:
        """Serve `variant` (role "base" or "variant") for the duration of the `with` block."""


def make_server(cfg: RunConfig) -> Server:
    return resolve(SERVERS, "serve backend", cfg.serve.backend)(cfg)


def check_serve(cfg: RunConfig) -> None:
    """Preflight: the backend exists and its config is usable."""
    resolve(SERVERS, "serve backend", cfg.serve.backend).check(cfg)


def check_serve_reachable(cfg: RunConfig) -> None:
    """Preflight, before anything is written: a backend serving through servers it did not start
    (`check_reachable`, e.g. serve=endpoint) contacts them."""
    backend = resolve(SERVERS, "serve backend", cfg.serve.backend)
    if hasattr(backend, "check_reachable"):
        backend.check_reachable(cfg)


def is_served(cfg: RunConfig) -> bool:
    return cfg.serve.backend != "inprocess"


def engine_identity(served: ServedModel) -> dict[str, Any]:
    """What makes two served results comparable: engine, version and the args that change outputs."""
    args = {key: value for key, value in served.engine_args.items() if key not in INSTANCE_ARGS}
    identity = {"engine": served.engine, "engine_version": served.engine_version, "engine_args": args}
    if not served.identity_verified:  # scores from an unchecked server never stand in for checked ones
        identity["unverified_endpoint"] = redact(served.base_url)
    return identity


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds the stack like Ctrl-C, so every `with serve(...)` stops its server."""
    def interrupt(signum, frame):
        raise interrupts.Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: the caller owns signal handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
