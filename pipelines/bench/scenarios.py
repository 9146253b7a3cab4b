"""What the benchmark runs: load levels, unique random prompts, warmup and repeats, from BenchConfig.

A load level with batch size B serves ceil(requests_per_level / B) batches of B requests back to
back (whole batches only, so every batch is really at load B), after ceil(warmup_requests / B)
warmup batches whose timings are dropped; the measured batches are run `repeats` times.
Every prompt is `input_tokens` random ids from the tokenizer's ordinary vocabulary (no special or
added tokens) and no two prompts of a run are equal, so no prefix cache can inflate the numbers.
Exercised by `pytest tests/test_bench.py -k scenario`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.config import BenchConfig
from pipelines.errors import ConfigError, InputError

Prompt = list[int]
Batch = list[Prompt]


@dataclass
class LevelPlan:
    batch_size: int
    warmup_batches: list[Batch]
    # repeats[r] is the list of batches of repeat r.
    repeats: list[list[Batch]]

    @property
    def requests_per_repeat(self) -> int:
        return sum(len(batch) for batch in self.repeats[0])


def ordinary_token_ids(tokenizer) -> np.ndarray:
    """Ids of the tokenizer's normal vocabulary: special and added tokens excluded."""
    excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = np.array(sorted(set(tokenizer.get_vocab().values()) - excluded), dtype=np.int64)
    if ids.size < 2:
        raise InputError(f"tokenizer has {ids.size} ordinary tokens; cannot build benchmark prompts")
    return ids


def plan_levels(bench: BenchConfig, token_ids: np.ndarray) -> list[LevelPlan]:
    """Draw every prompt of the run from one generator seeded with bench.seed (reproducible)."""
    _check_enough_distinct_prompts(bench, token_ids.size)
    draw = _UniquePrompts(token_ids, bench.input_tokens, bench.seed)
    plans = []
    for size in bench.batch_sizes:
        warmup = [draw.batch(size) for _ in range(math.ceil(bench.warmup_requests / size))]
        batches_per_repeat = math.ceil(bench.requests_per_level / size)
        repeats = [[draw.batch(size) for _ in range(batches_per_repeat)] for _ in range(bench.repeats)]
        plans.append(LevelPlan(batch_size=size, warmup_batches=warmup, repeats=repeats))
    return plans


def _check_enough_distinct_prompts(bench: BenchConfig, vocabulary: int) -> None:
    needed = sum((math.ceil(bench.warmup_requests / size) + bench.repeats * math.ceil(bench.requests_per_level / size))
                 * size for size in bench.batch_sizes)
    # At least twice the prompts needed, so redrawing a duplicate stays rare and the loop ends.
    if vocabulary ** bench.input_tokens < 2 * needed:
        raise ConfigError(f"bench.input_tokens={bench.input_tokens} over {vocabulary} ordinary tokens cannot give "
                         f"{needed} distinct prompts; raise bench.input_tokens")


class _UniquePrompts:
    def __init__(self, token_ids: np.ndarray, length: int, seed: int):
        self.token_ids = token_ids
        self.length = length
        self.rng = np.random.default_rng(seed)
        self.seen: set[tuple[int, ...]] = set()

    def batch(self, size: int) -> Batch:
        return [self.prompt() for _ in range(size)]

    def prompt(self) -> Prompt:
        while True:
            prompt = tuple(int(i) for i in self.rng.choice(self.token_ids, size=self.length))
            if prompt not in self.seen:
                self.seen.add(prompt)
                return list(prompt)
