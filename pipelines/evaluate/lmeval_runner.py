"""Runs lm-evaluation-harness on one checkpoint: the `hf` backend everywhere, `vllm` where installed.

The LM is built the way `lm_eval.simple_evaluate` builds it from a model name (registry +
`create_from_arg_obj`, i.e. `pretrained=<checkpoint dir>`), then handed to `simple_evaluate`, so the
evaluate stage can reuse the loaded model for the reference-text pass instead of loading it twice.

Exercised by: pytest tests/test_evaluate.py
"""

from __future__ import annotations

import difflib
import inspect
import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pipelines.config import EvalConfig, ModelConfig
from pipelines.errors import ConfigError, InputError
from pipelines.registry import did_you_mean

log = logging.getLogger(__name__)

# simple_evaluate arguments the config sets through its own fields; eval.params may not repeat them.
OWNED_ARGUMENTS = {
    "model", "model_args", "tasks", "num_fewshot", "batch_size", "device", "limit", "log_samples",
    "apply_chat_template", "task_manager", "random_seed", "numpy_random_seed", "torch_random_seed",
    "fewshot_random_seed",
}


def resolve_include_path(include_path: str | None) -> Path | None:
    """`embedded` is the bundled evalsuites/ package; anything else is a task directory."""
    if include_path is None:
        return None
    if include_path == "embedded":
        from evalsuites import SUITES_DIR

        return SUITES_DIR
    path = Path(include_path).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"eval.include_path={include_path} is not a directory; give a folder of lm-eval task YAMLs")
    return path


class LMEvalRunner:
    """One lm-eval run per checkpoint, with every result-changing setting taken from the config."""

    def __init__(self, eval_cfg: EvalConfig, model_cfg: ModelConfig, device: str) -> None:
        self.eval_cfg = eval_cfg
        self.model_cfg = model_cfg
        self.device = device

    @staticmethod
    def check(eval_cfg: EvalConfig) -> None:
        """Preflight: the runner's library is installed and eval.params are simple_evaluate's arguments."""
        if eval_cfg.runner == "vllm" and find_spec("vllm") is None:
            raise ConfigError("eval.runner=vllm but vllm is not installed; pip install 'quantgate[vllm]' "
                              "or set eval.runner=hf")
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
        from pipelines.logs import library_output_to_log

        with library_output_to_log("lm_eval"):  # a compressed checkpoint imports compressed-tensors
            return get_model(self.eval_cfg.runner).create_from_arg_obj(args, extra)

    def evaluate(self, lm, manager) -> dict[str, Any]:
        """Run the configured tasks with per-sample logging; returns lm-eval's results dict."""
        import lm_eval

        seed = self.eval_cfg.seed
        log.info("evaluating tasks %s (limit=%s, fewshot=%s)", self.eval_cfg.tasks, self.eval_cfg.limit,
                 self.eval_cfg.num_fewshot)
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(self.eval_cfg.tasks), num_fewshot=self.eval_cfg.num_fewshot,
            batch_size=self.eval_cfg.batch_size, device=self.device, limit=self.eval_cfg.limit,
            log_samples=True, apply_chat_template=self.eval_cfg.apply_chat_template, task_manager=manager,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            **self.eval_cfg.params,
        )

    def task_manager(self, include_path: Path | None):
        """lm-eval's task index, checked to contain every configured task (before any model loads).

        Only the suite directory is indexed when it has every task: indexing lm-eval's ~15k built-in
        tasks takes 10-30 s on 2 cores, longer than evaluating a small suite."""
        from lm_eval.tasks import TaskManager

        if include_path is not None:
            manager = TaskManager(include_path=str(include_path), include_defaults=False)
            if set(self.eval_cfg.tasks) <= set(manager.all_tasks):
                return manager
        manager = TaskManager(include_path=str(include_path) if include_path else None)
        self.check_tasks(manager.all_tasks)
        return manager

    def check_tasks(self, known: list[str]) -> None:
        for task in self.eval_cfg.tasks:
            if task not in known:
                # lm-eval knows thousands of tasks: name the closest one, not all of them.
                close = difflib.get_close_matches(task, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise InputError(f"eval.tasks: unknown lm-eval task '{task}'{hint}; "
                                 "check eval.include_path or run `lm_eval ls tasks`")
