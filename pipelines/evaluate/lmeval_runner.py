"""Runs lm-evaluation-harness on one checkpoint: the `hf` backend everywhere, `vllm` where installed.

The LM is built the way `lm_eval.simple_evaluate` builds it from a model name (registry +
`create_from_arg_obj`, i.e. `pretrained=<checkpoint dir>`), then handed to `simple_evaluate`, so the
evaluate stage can reuse the loaded model for the reference-text pass instead of loading it twice.

Exercised by: pytest tests/test_evaluate.py
"""

from __future__ import annotations

import inspect
import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pipelines.config import EvalConfig, ModelConfig
from pipelines.errors import ConfigError
from pipelines.logs import library_output_to_log
from pipelines.registry import did_you_mean

log = logging.getLogger(__name__)

# simple_evaluate arguments the config sets through its own fields; eval.params may not repeat them.
OWNED_ARGUMENTS = {
    "model", "model_args", "tasks", "num_fewshot", "batch_size", "device", "limit", "samples", "log_samples",
    "apply_chat_template", "task_manager", "random_seed", "numpy_random_seed", "torch_random_seed",
    "fewshot_random_seed",
}


class LMEvalRunner:
    """One lm-eval run per checkpoint, with every result-changing setting taken from the config."""

    libraries = ("lm_eval", "transformers", "torch")

    def __init__(self, eval_cfg: EvalConfig, model_cfg: ModelConfig, device: str) -> None:
        self.eval_cfg = eval_cfg
        self.model_cfg = model_cfg
        self.device = device

    @classmethod
    def check(cls, eval_cfg: EvalConfig) -> None:
        """Preflight: the backend is installed and eval.params are arguments lm-eval takes."""
        if eval_cfg.runner == "vllm" and find_spec("vllm") is None:
            raise ConfigError("eval.runner=vllm but vllm is not installed; pip install 'quantgate[vllm]' "
                              "or set eval.runner=hf")
        cls.check_params(eval_cfg)

    @staticmethod
    def check_params(eval_cfg: EvalConfig) -> None:
        """eval.params are lm_eval.simple_evaluate arguments the config does not set through its own fields."""
        import lm_eval

        accepted = set(inspect.signature(lm_eval.simple_evaluate).parameters) - OWNED_ARGUMENTS
        for name in eval_cfg.params:
            if name in OWNED_ARGUMENTS:
                raise ConfigError(f"eval.params.{name} is set by the eval config itself; use its own field instead")
            if name not in accepted:
                raise ConfigError("eval.params: " + did_you_mean("lm_eval.simple_evaluate argument", name, accepted))

    def model_args(self, checkpoint_dir: Path, add_bos_token: bool | None) -> dict[str, Any]:
        """lm-eval model arguments, exactly as `lm_eval --model_args` would pass them."""
        args: dict[str, Any] = {"pretrained": str(checkpoint_dir), "dtype": self.model_cfg.dtype,
                                "trust_remote_code": self.model_cfg.trust_remote_code}
        if add_bos_token is not None:
            args["add_bos_token"] = add_bos_token
        if self.eval_cfg.runner == "vllm":
            args["seed"] = self.eval_cfg.seed
            if self.eval_cfg.max_length is not None:
                args["max_model_len"] = self.eval_cfg.max_length
        elif self.eval_cfg.max_length is not None:
            args["max_length"] = self.eval_cfg.max_length
        return args

    def build_lm(self, checkpoint_dir: Path, add_bos_token: bool | None):
        from lm_eval.api.registry import get_model

        args = self.model_args(checkpoint_dir, add_bos_token)
        log.info("loading %s with lm-eval's %s backend on %s", checkpoint_dir, self.eval_cfg.runner, self.device)
        extra = {"batch_size": self.eval_cfg.batch_size, "device": self.device}
        with library_output_to_log("lm_eval"):  # a compressed checkpoint imports compressed-tensors
            return get_model(self.eval_cfg.runner).create_from_arg_obj(args, extra)

    def evaluate(self, lm, manager, samples: dict[str, list[int]] | None = None) -> dict[str, Any]:
        """Run the configured tasks with per-sample logging; returns lm-eval's results dict.

        `samples` ({leaf task: doc ids}, sequential runs) scores just those documents of those
        tasks instead (lm-eval takes either samples or limit, never both)."""
        import lm_eval

        seed = self.eval_cfg.seed
        tasks, limit = (list(samples), None) if samples is not None else (list(self.eval_cfg.tasks), self.eval_cfg.limit)
        log.info("evaluating tasks %s (limit=%s, fewshot=%s)", tasks, limit, self.eval_cfg.num_fewshot)
        return lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=self.eval_cfg.num_fewshot,
            batch_size=self.eval_cfg.batch_size, device=self.device, limit=limit, samples=samples,
            log_samples=True, apply_chat_template=self.eval_cfg.apply_chat_template, task_manager=manager,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            **self.eval_cfg.params,
        )


class VLLMEvalRunner(LMEvalRunner):
    """eval.runner=vllm: lm-eval's vllm backend (model_args and check follow `eval_cfg.runner`)."""

    libraries = (*LMEvalRunner.libraries, "vllm")
