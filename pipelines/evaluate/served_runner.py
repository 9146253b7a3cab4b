"""Scores a served checkpoint with lm-eval's `local-completions` model: the engine that will serve it.

Chosen by the evaluate stage whenever serve is not `inprocess` (`python -m pipelines.run serve=vllm`).
Generation tasks go through /v1/completions; loglikelihood and multiple-choice tasks through
`echo` + `logprobs` (prompt log-probs), with prompts sent as token ids from the checkpoint's own
tokenizer. BOS is explicit: `add_bos_token` is always passed, resolved from the tokenizer when the
config leaves it unset (without it local-completions drops BOS and answers change).

Exercised by: pytest tests/test_served_e2e.py tests/test_serve.py
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.config import EvalConfig, ModelConfig, ServeConfig
from pipelines.evaluate.lmeval_runner import LMEvalRunner
from pipelines.errors import InputError
from pipelines.records import ServedModel
from pipelines.shape import parse_config_json

log = logging.getLogger(__name__)

LM_EVAL_MODEL = "local-completions"
# lm-eval's API models default to 2048 tokens of context; a model's own limit is the honest one.
FALLBACK_MAX_LENGTH = 2048


class ServedRunner(LMEvalRunner):
    """LMEvalRunner whose model is an OpenAI-compatible endpoint instead of weights in this process."""

    def __init__(self, eval_cfg: EvalConfig, model_cfg: ModelConfig, device: str, served: ServedModel,
                 serve_cfg: ServeConfig) -> None:
        self.eval_cfg = eval_cfg
        self.model_cfg = model_cfg
        self.device = device
        self.served = served
        self.serve_cfg = serve_cfg
        self.check_params(eval_cfg)

    def model_args(self, checkpoint_dir: Path, add_bos_token: bool | None) -> dict[str, Any]:
        """local-completions arguments (the API key travels in a header and is never in these)."""
        if add_bos_token is None:
            raise ValueError("served scoring needs add_bos_token resolved, not None")
        return {"model": self.served.model, "base_url": f"{self.served.base_url.rstrip('/')}/completions",
                "tokenizer": self.served.tokenizer_dir, "tokenizer_backend": "huggingface",
                "add_bos_token": add_bos_token, "num_concurrent": self.serve_cfg.eval_concurrency,
                "max_retries": 3, "seed": self.eval_cfg.seed, "tokenized_requests": True,
                "max_length": self.eval_cfg.max_length or max_positions(checkpoint_dir),
                "trust_remote_code": self.model_cfg.trust_remote_code}

    def build_lm(self, checkpoint_dir: Path, add_bos_token: bool | None):
        from lm_eval.api.registry import get_model

        args = self.model_args(checkpoint_dir, add_bos_token)
        log.info("scoring %s through %s (lm-eval %s, add_bos_token=%s)", self.served.model, self.served.base_url,
                 LM_EVAL_MODEL, add_bos_token)
        if self.served.api_key:
            args["header"] = {"Authorization": f"Bearer {self.served.api_key}"}
        return get_model(LM_EVAL_MODEL).create_from_arg_obj(args, {"batch_size": 1})


def max_positions(checkpoint_dir: Path) -> int:
    """The checkpoint's context length from its config.json, so no prompt exceeds what the server accepts."""
    try:
        config = parse_config_json(Path(checkpoint_dir) / "config.json")
    except (OSError, InputError):
        return FALLBACK_MAX_LENGTH
    config = config.get("text_config", config)
    return int(config.get("max_position_embeddings") or FALLBACK_MAX_LENGTH)
