"""Invoice-total domain: add 2 or 3 two-digit line amounts, answer the total.

Multi-term addition written most-significant digit first forces the model to resolve
every carry before the first answer digit; it is learnable by a tiny model but not
saturated, which is what makes low-bit weight damage visible.

Exercised by: python -m pipelines.embedded.data --out /tmp/qg-data
"""
from __future__ import annotations

import random

from pipelines.embedded.items import EvalItem

TASK = "qg_invoice_total"
LINE_COUNTS = (2, 3)


class InvoiceDomain:
    """Seeded generator of invoices; eval/reference invoices are never used for training."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.heldout: set[tuple[int, ...]] = set()

    def _fresh_lines(self) -> tuple[int, ...]:
        while True:
            lines = tuple(self.rng.randint(10, 99) for _ in range(self.rng.choice(LINE_COUNTS)))
            # Keyed by the sorted amounts: a reordering of a held-out invoice is held out too.
            if tuple(sorted(lines)) not in self.heldout:
                return lines

    @staticmethod
    def _query(lines: tuple[int, ...]) -> str:
        return "Invoice lines " + ", ".join(map(str, lines)) + ". Total:"

    def _hold_out(self) -> tuple[int, ...]:
        lines = self._fresh_lines()
        self.heldout.add(tuple(sorted(lines)))
        return lines

    def eval_items(self, count: int) -> list[EvalItem]:
        items = []
        for index in range(count):
            lines = self._hold_out()
            meta = {"n_lines": len(lines)}
            items.append(EvalItem(f"inv-{index:04d}", self._query(lines), str(sum(lines)), meta=meta))
        return items

    def reference_records(self, count: int) -> list[str]:
        return [f"{self._query(lines)} {sum(lines)}." for lines in (self._hold_out() for _ in range(count))]

    def training_record(self) -> str:
        lines = self._fresh_lines()
        return f"{self._query(lines)} {sum(lines)}."
