"""The evaluation stage of a plan: requests, time and cost of scoring base and variant, before any download.

    python -m pipelines.run model=llama3-70b quant=fp8 plan=true     (the "evaluate" and "sequential" lines)

Local suites are counted by lm-eval (`suite_items`); hub tasks take their size from
eval.task_sizes (conf/eval/standard.yaml: items of the split lm-eval scores, answer choices, prompt
tokens, max_gen_toks). A multiple-choice item is one loglikelihood request per choice, each a
prefill of its prompt; a generation item is a prefill plus up to max_gen_toks decoding steps, in
batches of eval.batch_size. Times are roofline lower bounds (pipelines/cost.py) on the GPUs the run
holds, for base and variant each on its own weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from pipelines.config import GateConfig, RunConfig, TaskSize
from pipelines.confidence_sequence import BettingConfidenceSequence
from pipelines.cost import decode_step_bound_s, prefill_bound_s, scaled_hardware
from pipelines.evaluate.sequential import KL_CLIP_FACTOR, looks_alpha
from pipelines.evaluate.suites import local_item_counts, resolve_include_path
from pipelines.sizing import roofline_shape

# Prompt tokens per scored item of a local suite (a question plus few-shot examples): an assumption.
ASSUMED_TOKENS_PER_ITEM = 512
# A sequential run that has not decided by this many items per task is taken to use the whole task.
_MAX_SEQUENTIAL_ITEMS = 20_000


@dataclass
class EvalEstimate:
    items: int
    loglikelihood_requests: int
    generation_requests: int
    max_gen_toks: int
    seconds: float  # base + variant
    local_items: int = 0  # of local suites: priced as one request of ASSUMED_TOKENS_PER_ITEM each

    def requests(self) -> str:
        parts = [f"{self.items:,} items"]
        if self.loglikelihood_requests:
            parts.append(f"{self.loglikelihood_requests:,} loglikelihood requests")
        if self.generation_requests:
            parts.append(f"{self.generation_requests:,} generations of up to {self.max_gen_toks} tokens")
        if self.local_items:
            parts.append(f"{self.local_items:,} of local suites at one {ASSUMED_TOKENS_PER_ITEM}-token request "
                         "each (assumed)")
        return ", ".join(parts)


def task_size(cfg: RunConfig, task: str, items: int) -> TaskSize:
    """The task's shipped size, or a local suite's counted items with the assumed prompt length."""
    size = cfg.eval.task_sizes.get(task)
    return size or TaskSize(items=items, split="local", tokens_per_request=ASSUMED_TOKENS_PER_ITEM)


def estimates(plan) -> tuple[EvalEstimate | None, EvalEstimate | None]:
    """Scoring every item, and with eval.sequential=true if the variant changed no answer; None where
    a suite's size is unknown or nothing is on the hub to estimate a sequential run by."""
    if not plan.suites or None in dict(plan.suites).values():
        return None, None
    used = sequential_suites(plan.cfg, plan.suites)
    return estimate(plan, plan.suites), (estimate(plan, used) if used is not None else None)


def estimate(plan, suites: list[tuple[str, int]]) -> EvalEstimate:
    """Requests and roofline seconds of scoring `suites` (task, items) with base and variant."""
    cfg, hardware = plan.cfg, _hardware(plan)
    shapes = [roofline_shape(plan.size, plan.base_bytes, None),
              roofline_shape(plan.size, plan.variant_bytes, cfg.quant.scheme)]
    result = EvalEstimate(items=0, loglikelihood_requests=0, generation_requests=0, max_gen_toks=0, seconds=0.0)
    for task, items in suites:
        size = task_size(cfg, task, items)
        requests = items * size.requests_per_item
        result.items += items
        if task not in cfg.eval.task_sizes:
            result.local_items += items
        elif size.max_gen_toks:
            result.generation_requests += requests
            result.max_gen_toks = max(result.max_gen_toks, size.max_gen_toks)
        else:
            result.loglikelihood_requests += requests
        result.seconds += sum(_requests_seconds(shape, hardware, size, requests, cfg.eval.batch_size)
                              for shape in shapes)
    return result


def _hardware(plan):
    return scaled_hardware(plan.cfg, plan.serve_gpus)


def _requests_seconds(shape, hardware, size: TaskSize, requests: int, batch: int) -> float:
    seconds = prefill_bound_s(shape, hardware, requests, size.tokens_per_request)
    if size.max_gen_toks:
        context = size.tokens_per_request + size.max_gen_toks / 2
        step = decode_step_bound_s(shape, hardware, min(batch, requests), context)
        seconds += math.ceil(requests / batch) * size.max_gen_toks * step
    return seconds


def sequential_suites(cfg: RunConfig, suites: list[tuple[str, int]]) -> list[tuple[str, int]] | None:
    """Items per task that eval.sequential=true would score if the variant changed no answer.

    Each leaf task stops at the first look whose confidence sequences decide every blocking rule;
    a group's items are taken as spread evenly over its subtasks. Local suites are counted in full
    (their clusters, which a sequential run looks at, are not counted here). None with a relative
    tolerance (sequential runs refuse it)."""
    if cfg.gate.tolerance.kind != "absolute" or not any(task in cfg.eval.task_sizes for task, _ in suites):
        return None
    used = []
    for task, items in suites:
        size = cfg.eval.task_sizes.get(task)
        if size is None:
            used.append((task, items))
            continue
        stop = best_case_stop(cfg.gate, cfg.eval.chunk_size, multiple_choice=not size.max_gen_toks)
        per_leaf = items / size.subtasks
        used.append((task, round(size.subtasks * min(per_leaf, stop or per_leaf))))
    return used


def best_case_stop(gate: GateConfig, chunk_size: int, multiple_choice: bool) -> int | None:
    """Items after which a variant that changes no answer has every blocking rule PASS (looks of chunk_size)."""
    rules = {"accuracy": ((gate.tolerance.max_drop + 1) / 2, 0.5)}  # drop 0, mapped to [0, 1]
    if gate.max_flip_rate is not None:
        rules["flip_rate"] = (gate.max_flip_rate, 0.0)
    if gate.max_kl is not None and multiple_choice:
        rules["kl"] = (1 / KL_CLIP_FACTOR, 0.0)  # max_kl over its clip at 20 x max_kl
    rules = {rule: value for rule, value in rules.items() if rule in gate.blocking}
    sequences = {rule: BettingConfidenceSequence(looks_alpha(gate.confidence), [threshold])
                 for rule, (threshold, _) in rules.items()}
    for looked in range(chunk_size, _MAX_SEQUENTIAL_ITEMS + 1, chunk_size):
        for rule, (threshold, value) in rules.items():
            sequences[rule].update(np.full(chunk_size, value))
        if all(sequences[rule].high[0] < threshold for rule, (threshold, _) in rules.items()):
            return looked
    return None


def suite_items(cfg: RunConfig) -> list[tuple[str, int | None]]:
    """Items per task: counted for local suites (lm-eval loads their files), from eval.task_sizes for hub
    datasets, None for hub datasets without one."""
    include = resolve_include_path(cfg.eval.include_path)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task notes would bury the plan
    found = local_item_counts(cfg.eval.tasks, include) if include else {}
    local = {name: n for leaves in found.values() for name, n in leaves.items()}
    sizes = {task: size.items for task, size in cfg.eval.task_sizes.items()}
    counted = list(local.items()) + [(t, sizes.get(t)) for t in cfg.eval.tasks if t not in found]
    return [(name, min(n, cfg.eval.limit) if n is not None and cfg.eval.limit else n) for name, n in counted]
