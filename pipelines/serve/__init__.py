"""The serve seam: how a checkpoint is put behind an OpenAI-compatible endpoint for scoring and timing.

    python -m pipelines.run serve=vllm quant=fp8         # vLLM's OpenAI server, one per checkpoint
    python -m pipelines.run serve=endpoint serve.urls.base=http://h:8000/v1 serve.urls.variant=http://h:8001/v1

A backend (registry.SERVERS, conf/serve/*.yaml) implements the `Server` protocol: `config_schema`
its own fields (a ServeConfig subclass, registered as serve/<backend>_schema, which its YAML names),
the capabilities callers ask instead of its name (`in_process`, `starts_server`; a schema deriving
from ParallelServerConfig is sized on GPUs by plan=true), `check(cfg)` the cheap preflight (a
backend using servers it did not start adds `check_reachable(cfg)`), `libraries` the packages whose
versions belong in cache keys, and `serve(variant, role, output_dir)` a context manager yielding the
`ServedModel` scoring and benchmarking talk to (None in process: transformers here). Whatever
happens inside the `with` (an exception, Ctrl-C, SIGTERM), the server it started is stopped.
Adding `serve=sglang` is one module here, one YAML in conf/serve/ and one registry line
(tests/test_serve_seam.py adds a fake backend that way).

Exercised by: pytest tests/test_serve.py
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ContextManager, Protocol

from pipelines import interrupts
from pipelines.config import ParallelServerConfig, RunConfig, ServeConfig
from pipelines.errors import ConfigError
from pipelines.records import ServedModel, Variant
from pipelines.redact import redact
from pipelines.registry import SERVERS, resolve

# Engine args that name one server instance, not how it computes: left out of cache keys and comparisons.
INSTANCE_ARGS = frozenset({"host", "port", "served_model_name", "model", "api_key"})


class Server(Protocol):
    libraries: tuple[str, ...]
    config_schema: type[ServeConfig]
    # Scoring and timing run in this process (serve() yields None): no endpoint, no served bench.
    in_process: bool
    # quantgate starts the server on this machine (plan=true sizes it); False: servers run elsewhere.
    starts_server: bool

    def __init__(self, cfg: RunConfig) -> None: ...

    @staticmethod
    def check(cfg: RunConfig) -> None:
        """Validate the serve config cheaply (no server started); raise a UserError saying what to fix."""

    def serve(self, variant: Variant, role: str, output_dir: Path) -> ContextManager[ServedModel | None]:
        """Serve `variant` (role "base" or "variant") for the duration of the `with` block."""


def serve_backend(cfg: RunConfig) -> type[Server]:
    """The backend class cfg.serve names: callers ask its capabilities, never its name."""
    return resolve(SERVERS, "serve backend", cfg.serve.backend)


def make_server(cfg: RunConfig) -> Server:
    return serve_backend(cfg)(cfg)


def check_serve(cfg: RunConfig) -> None:
    """Preflight: the backend exists, its own schema holds the config, and its config is usable."""
    backend = serve_backend(cfg)
    if type(cfg.serve) is not backend.config_schema:
        raise ConfigError(f"serve.backend={cfg.serve.backend} does not take serve={cfg.serve.name}'s fields "
                          f"({type(cfg.serve).__name__}): choose a serve config of that backend instead")
    backend.check(cfg)


def check_serve_reachable(cfg: RunConfig) -> None:
    """Preflight, before anything is written: a backend serving through servers it did not start
    (`check_reachable`, e.g. serve=endpoint) contacts them."""
    backend = serve_backend(cfg)
    if hasattr(backend, "check_reachable"):
        backend.check_reachable(cfg)


def is_served(cfg: RunConfig) -> bool:
    """Scored and timed through an endpoint (not in this process)."""
    return not serve_backend(cfg).in_process


def runs_here(cfg: RunConfig) -> bool:
    """The served model takes this machine's memory (in process, or a server quantgate starts)."""
    backend = serve_backend(cfg)
    return backend.in_process or backend.starts_server


def gpu_memory_fraction(cfg: RunConfig) -> float:
    """The fraction of each GPU's memory serving may take: a parallel server's own setting, else the
    default one would get (what plan=true's tensor-parallel advice assumes)."""
    if isinstance(cfg.serve, ParallelServerConfig):
        return cfg.serve.gpu_memory_utilization
    return ParallelServerConfig.gpu_memory_utilization


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
