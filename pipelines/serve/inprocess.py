"""serve=inprocess (the default): nothing is served; transformers scores and times the checkpoint here.

Exercised by: pytest tests/test_serve.py
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from pipelines.config import RunConfig, ServeConfig
from pipelines.records import ServedModel, Variant


class InProcessServer:
    libraries: tuple[str, ...] = ()
    config_schema = ServeConfig  # no fields of its own
    in_process = True
    starts_server = False

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @staticmethod
    def check(cfg: RunConfig) -> None:
        """Nothing to check: the in-process path needs only what the other stages already check."""

    @contextlib.contextmanager
    def serve(self, variant: Variant, role: str, output_dir: Path) -> Iterator[ServedModel | None]:
        yield None
