"""serve=endpoint: already-running OpenAI-compatible servers (a staging deployment, a server you started).

    python -m pipelines.run serve=endpoint serve.urls.base=http://h:8000/v1 serve.urls.variant=http://h:8001/v1 \
        serve.api_key_env=STAGING_KEY

Each role ("base", "variant") has its URL; the model name is serve.models.<role>, else the one model
the endpoint lists. The checkpoints are still quantized locally: their tokenizer counts tokens and
their content hash keys the cache, so point each URL at a server of that very checkpoint. The API
key is read from the environment variable serve.api_key_env and never logged or recorded.

Trust nothing unchecked: preflight contacts both endpoints (before the run writes anything) and
refuses one URL and model for both roles unless serve.allow_same_endpoint=true. Before scoring,
the endpoint must show it serves the checkpoint being judged: vLLM's /v1/models `root` (the path
it loaded) is that checkpoint's directory, a copy of it (same quantgate content hash), or for the
base the hub id in model.source. Otherwise scoring is refused (exit 2), or with
serve.trust_endpoint=true it goes on and the gate's `identity` rule holds the verdict at most
INCONCLUSIVE, saying why.

Exercised by: pytest tests/test_serve.py
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import RunConfig, ServeConfig
from pipelines.errors import ConfigError, InputError
from pipelines.records import ServedModel, Variant
from pipelines.redact import redact
from pipelines.serve.process import check_endpoint, server_version
from pipelines.storage import read_manifest

log = logging.getLogger(__name__)
ROLES = ("base", "variant")


@dataclass
class EndpointServeConfig(ServeConfig):
    """serve=endpoint's fields (conf/serve/endpoint.yaml)."""

    # Already-running OpenAI-compatible servers, by role ("base", "variant").
    urls: dict[str, str] = field(default_factory=dict)
    # Model name per role, when an endpoint serves more than one.
    models: dict[str, str] = field(default_factory=dict)
    # Name of the environment variable holding the endpoints' API key (the key itself is never logged).
    api_key_env: str | None = None
    # Score an endpoint whose checkpoint cannot be checked (its /v1/models names no root matching the
    # checkpoint); the verdict is then at most INCONCLUSIVE and says why.
    trust_endpoint: bool = False
    # Base and variant may be the same URL and model (comparing a server with itself).
    allow_same_endpoint: bool = False


class EndpointServer:
    libraries: tuple[str, ...] = ()
    config_schema = EndpointServeConfig
    in_process = False
    starts_server = False  # the servers are someone else's: not started, stopped or sized here

    def __init__(self, cfg: RunConfig) -> None:
        self.check(cfg)
        self.cfg = cfg

    @staticmethod
    def check(cfg: RunConfig) -> None:
        """Cheap, no network: a URL per role, http(s), the key's variable set, two different servers."""
        missing = [role for role in ROLES if not cfg.serve.urls.get(role)]
        if missing:
            raise ConfigError("serve=endpoint needs a URL per role: set "
                              f"{' and '.join(f'serve.urls.{r}' for r in missing)} "
                              "(e.g. http://host:8000/v1)")
        for role in ROLES:
            if not cfg.serve.urls[role].startswith(("http://", "https://")):
                raise ConfigError(f"serve.urls.{role}={cfg.serve.urls[role]} must be an http(s) URL ending in /v1")
        if cfg.serve.api_key_env and cfg.serve.api_key_env not in os.environ:
            raise ConfigError(f"serve.api_key_env={cfg.serve.api_key_env} is not set in the environment; "
                              "export it or unset serve.api_key_env")
        base, variant = ((cfg.serve.urls[role].rstrip("/"), cfg.serve.models.get(role) or None) for role in ROLES)
        if base == variant and not cfg.serve.allow_same_endpoint:
            raise ConfigError(f"serve.urls.base and serve.urls.variant are the same endpoint ({base[0]}"
                              f"{f', model {base[1]}' if base[1] else ''}): the variant would be judged against "
                              "itself; point each at its own server, or set serve.allow_same_endpoint=true")

    @staticmethod
    def check_reachable(cfg: RunConfig) -> None:
        """Preflight, before the run writes anything: each endpoint answers /models and serves its model."""
        for role in ROLES:
            check_endpoint(cfg.serve.urls[role].rstrip("/"), cfg.serve.models.get(role) or None, _api_key(cfg))

    @contextlib.contextmanager
    def serve(self, variant: Variant, role: str, output_dir: Path) -> Iterator[ServedModel]:
        base_url = self.cfg.serve.urls[role].rstrip("/")
        wanted = self.cfg.serve.models.get(role) or None
        api_key = _api_key(self.cfg)
        entries = check_endpoint(base_url, wanted, api_key)
        if wanted is None and len(entries) != 1:
            raise InputError(f"endpoint {base_url} serves {len(entries)} models {[e.get('id') for e in entries]}; "
                             f"choose one with serve.models.{role}")
        entry = next(e for e in entries if wanted is None or e.get("id") == wanted)
        identity, verified = self._identity(entry, redact(base_url), variant, role)
        log.info("%s endpoint %s: %s", role, base_url, identity)
        version = server_version(base_url, api_key).get("version", "unknown")
        yield ServedModel(base_url=base_url, model=entry["id"], tokenizer_dir=variant.checkpoint_dir,
                          engine="endpoint", engine_version=str(version), engine_args={},
                          identity=identity, identity_verified=verified, api_key=api_key)

    def _identity(self, entry: dict[str, Any], base_url: str, variant: Variant, role: str) -> tuple[str, bool]:
        """How we know the endpoint serves `variant`, and whether we do; refuses when we do not, unless trusted."""
        root = entry.get("root")
        if root is not None and self._serves(str(root), variant, role):
            return f"model '{entry['id']}' serves {root}, the {role} checkpoint {variant.checkpoint_dir}", True
        found = f"reports root {root}" if root is not None else "reports no root (checkpoint path)"
        why = (f"endpoint {base_url} model '{entry['id']}' {found}, not the {role} checkpoint "
               f"{variant.checkpoint_dir}")
        if not self.cfg.serve.trust_endpoint:
            raise InputError(f"{why}: cannot tell that it serves {variant.name}; point serve.urls.{role} at a "
                             "server of that checkpoint, or set serve.trust_endpoint=true (the verdict is then "
                             "at most INCONCLUSIVE)")
        return f"unverified: {why} (serve.trust_endpoint=true)", False

    def _serves(self, root: str, variant: Variant, role: str) -> bool:
        """The root is the checkpoint's directory or a copy of it (same content hash); for the base,
        also the hub id the run was given."""
        if role == "base" and root == self.cfg.model.source:
            return True
        path = Path(root).expanduser()
        if not path.is_dir():
            return False
        if path.resolve() == Path(variant.checkpoint_dir).resolve():
            return True
        manifest = read_manifest(path)
        return manifest is not None and manifest.get("content_hash") == variant.content_hash


def _api_key(cfg: RunConfig) -> str | None:
    return os.environ.get(cfg.serve.api_key_env) if cfg.serve.api_key_env else None
