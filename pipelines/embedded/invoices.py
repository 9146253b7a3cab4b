"""Invoice-total domain: add 2 to 5 two-digit line amounts, showing the work, then the total.

The model writes a column-wise worked solution before the total ("Ones 7+1+0=8, tens
0+4+2+8=14, total 148"): ones digits summed, then the carry plus the tens digits, then
the total read off both. Each step is a small sum or a copy, so a tiny model learns the
procedure, yet every item chains a dozen or more dependent steps where one wrong token
fails the answer -- the multi-step shape that low-bit weight damage breaks first. Sums
of four and five digits in one step sit at the edge of the embedded model, which keeps
the suite below saturation. (Asked for the total alone, most-significant digit first,
the 1.3 M-parameter model stayed at 6.5 % exact match: it never learned the ones digit.)

Exercised by: python -m pipelines.embedded.data --out /tmp/qg-data
"""
from __future__ import annotations

import random

from pipelines.embedded.items import EvalItem

TASK = "qg_invoice_total"
LINE_COUNTS = (2, 3, 4, 5)


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
        return "Invoice lines " + ", ".join(map(str, lines)) + "."

    @staticmethod
    def _worked(lines: tuple[int, ...]) -> str:
        """The worked total, with no period inside so generation can stop at the first one."""
        ones = [amount % 10 for amount in lines]
        carry = sum(ones) // 10
        tens_sum = carry + sum(amount // 10 for amount in lines)
        ones_terms, tens_terms = "+".join(map(str, ones)), "+".join(str(amount // 10) for amount in lines)
        return f"Ones {ones_terms}={sum(ones)}, tens {carry}+{tens_terms}={tens_sum}, total {sum(lines)}"

    def _hold_out(self) -> tuple[int, ...]:
        lines = self._fresh_lines()
        self.heldout.add(tuple(sorted(lines)))
        return lines

    def eval_items(self, count: int) -> list[EvalItem]:
        items = []
        for index in range(count):
            lines = self._hold_out()
            meta = {"n_lines": len(lines)}
            items.append(EvalItem(f"inv-{index:04d}", self._query(lines), str(sum(lines)),
                                  worked=self._worked(lines), meta=meta))
        return items

    def reference_records(self, count: int) -> list[str]:
        return [f"{self._query(lines)} {self._worked(lines)}." for lines in (self._hold_out() for _ in range(count))]

    def training_record(self) -> str:
        lines = self._fresh_lines()
        return f"{self._query(lines)} {self._worked(lines)}."
