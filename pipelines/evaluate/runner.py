"""The eval runner seam: what the evaluate stage asks of a backend that scores a checkpoint.

A runner (registry.EVAL_RUNNERS, picked by `eval.runner`; `ServedRunner` when a server is
configured) is built with the eval and model configs and the device, loads an lm-eval LM for a
checkpoint and runs the configured tasks on it. Task discovery is not its job (see
pipelines/evaluate/suites.py). Implemented by pipelines/evaluate/lmeval_runner.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from pipelines.config import EvalConfig, ModelConfig


class EvalRunner(Protocol):
    # Libraries whose versions change scores: part of the eval cache key (requested_settings).
    libraries: ClassVar[tuple[str, ...]]

    def __init__(self, eval_cfg: EvalConfig, model_cfg: ModelConfig, device: str) -> None: ...

    @classmethod
    def check(cls, eval_cfg: EvalConfig) -> None:
        """Preflight, no model loaded: raise a ConfigError for settings this runner cannot use (eval.params)."""

    def build_lm(self, checkpoint_dir: Path, add_bos_token: bool | None) -> Any:
        """lm-eval's LM for the checkpoint (`add_bos_token` None: the tokenizer's own behaviour)."""

    def evaluate(self, lm: Any, manager: Any) -> dict[str, Any]:
        """Run eval_cfg.tasks from `manager` (lm-eval's TaskManager) with per-sample logs; lm-eval's results."""
