"""Expense-policy domain: route a claim by a two-rule chain stated in the prompt.

Each record states approval limits and a filing deadline; the claim is rejected when
filed late or above the top limit, otherwise routed to the lowest tier whose limit
covers it. Numbers vary per record, so the model must compare in context rather than
memorise; claims near a limit are the fragile cases quantization flips first.

Exercised by: python -m pipelines.embedded.data --out /tmp/qg-data
"""
from __future__ import annotations

import random

from pipelines.embedded.items import EvalItem

TASK = "qg_policy_route"
ROUTES = ("auto", "manager", "director", "reject")


class PolicyDomain:
    """Seeded generator of claims with a balanced route distribution."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.heldout: set[tuple[int, ...]] = set()

    def _limits(self) -> tuple[int, int, int, int]:
        auto = self.rng.randint(20, 90)
        manager = self.rng.randint(auto + 20, 400)
        director = self.rng.randint(manager + 50, 900)
        return auto, manager, director, self.rng.randint(10, 60)

    def _claim(self, route: str, limits: tuple[int, int, int, int]) -> tuple[int, int]:
        auto, manager, director, deadline = limits
        on_time = self.rng.randint(1, deadline)
        if route == "auto":
            return self.rng.randint(1, auto), on_time
        if route == "manager":
            return self.rng.randint(auto + 1, manager), on_time
        if route == "director":
            return self.rng.randint(manager + 1, director), on_time
        if self.rng.random() < 0.5:
            return self.rng.randint(1, director), self.rng.randint(deadline + 1, 99)
        return self.rng.randint(director + 1, 999), on_time

    def _fresh_case(self) -> tuple[tuple[int, ...], str]:
        while True:
            route = self.rng.choice(ROUTES)
            limits = self._limits()
            case = limits + self._claim(route, limits)
            if case not in self.heldout:
                return case, route

    @staticmethod
    def _query(case: tuple[int, ...]) -> str:
        auto, manager, director, deadline, amount, day = case
        return (f"Policy: auto up to {auto}, manager up to {manager}, director up to {director}, "
                f"deadline day {deadline}. Claim {amount} on day {day}. Route:")

    def _hold_out(self) -> tuple[tuple[int, ...], str]:
        case, route = self._fresh_case()
        self.heldout.add(case)
        return case, route

    def eval_items(self, count: int) -> list[EvalItem]:
        items = []
        for index in range(count):
            case, route = self._hold_out()
            items.append(EvalItem(f"pol-{index:04d}", self._query(case), route, ROUTES, {"route": route}))
        return items

    def reference_records(self, count: int) -> list[str]:
        return [f"{self._query(case)} {route}." for case, route in (self._hold_out() for _ in range(count))]

    def training_record(self) -> str:
        case, route = self._fresh_case()
        return f"{self._query(case)} {route}."
