"""serve=endpoint: already-running OpenAI-compatible servers (a staging deployment, a server you started).

    python -m pipelines.run serve=endpoint serve.urls.base=http://h:8000/v1 serve.urls.variant=http://h:8001/v1 \
        serve.api_key_env=STAGING_KEY

Each role ("base", "variant") has its URL; the model name is serve.models.<role>, else the one model
the endpoint lists. The checkpoints are still quantized locally: their tokenizer counts tokens and
their content hash keys the cache, so point each URL at a server of that very checkpoint. The API
key is read from the environment variable serve.api_key_env and never logged or recorded.

Exercised by: pytest tests/test_serve.py
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipelines.config import RunConfig
from pipelines.errors import ConfigError, InputError
from pipelines.records import ServedModel, Variant
from pipelines.serve.process import check_endpoint, server_version

ROLES = ("base", "variant")


class EndpointServer:
    libraries: tuple[str, ...] = ()

    def __init__(self, cfg: RunConfig) -> None:
        self.check(cfg)
        self.cfg = cfg

    @staticmethod
    def check(cfg: RunConfig) -> None:
        missing = [role for role in ROLES if not cfg.serve.urls.get(role)]
        if missing:
            raise ConfigError(f"serve=endpoint needs a URL per role: set {' and '.join(f'serve.urls.{r}' for r in missing)} "
                              "(e.g. http://host:8000/v1)")
        for role in ROLES:
            if not cfg.serve.urls[role].startswith(("http://", "https://")):
                raise ConfigError(f"serve.urls.{role}={cfg.serve.urls[role]} must be an http(s) URL ending in /v1")
        if cfg.serve.api_key_env and cfg.serve.api_key_env not in os.environ:
            raise ConfigError(f"serve.api_key_env={cfg.serve.api_key_env} is not set in the environment; "
                              "export it or unset serve.api_key_env")

    def api_key(self) -> str | None:
        return os.environ.get(self.cfg.serve.api_key_env) if self.cfg.serve.api_key_env else None

    @contextlib.contextmanager
    def serve(self, variant: Variant, role: str, output_dir: Path) -> Iterator[ServedModel]:
        base_url = self.cfg.serve.urls[role].rstrip("/")
        wanted = self.cfg.serve.models.get(role) or None
        names = check_endpoint(base_url, wanted, self.api_key())
        if wanted is None and len(names) != 1:
            raise InputError(f"endpoint {base_url} serves {len(names)} models {names}; choose one with "
                             f"serve.models.{role}")
        version = server_version(base_url, self.api_key()).get("version", "unknown")
        yield ServedModel(base_url=base_url, model=wanted or names[0], tokenizer_dir=variant.checkpoint_dir,
                          engine="endpoint", engine_version=str(version), engine_args={})
