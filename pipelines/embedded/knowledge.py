"""Vendor knowledge-base domain: fictional vendors with four facts each, Zipf-distributed.

Training text states every vendor's facts ("profiles") and asks questions about the
facts of about half the vendors; the eval asks about the other vendors, whose facts
were only ever stated, never asked. Vendor popularity follows a Zipf law, so tail vendors are seen a
handful of times: those barely-stored facts are what low-bit quantization erodes first.

Exercised by: python -m pipelines.embedded.data --out /tmp/qg-data
"""
from __future__ import annotations

import itertools
import random

from pipelines.embedded.items import EvalItem

TASK = "qg_vendor_facts"
N_VENDORS = 660
ZIPF_OFFSET = 20
SYLLABLES = ("ka", "lo", "mi", "ven", "tor", "sa", "bel", "dri", "quo", "nex", "pra", "zul",
             "fen", "go", "rax", "til", "mor", "hu", "ves", "dan")
SUFFIXES = ("Ltd", "Group", "Systems", "Freight", "Labs", "Supply", "Works", "Partners")
CITIES = ("Arvel", "Brisk", "Calder", "Dunmore", "Elsby", "Farrow", "Glenrock", "Halden", "Istra",
          "Jorvik", "Kelmora", "Lunde", "Marrow", "Norvale", "Oskar", "Pellam", "Quarry", "Rensa",
          "Solberg", "Tessin", "Ulmen", "Varna", "Westby", "Yarrow", "Zelt", "Ashford", "Belmont",
          "Corvin", "Delmar", "Eskil", "Fennick", "Gorran")
SECTORS = ("logistics", "catering", "printing", "security", "cleaning", "software", "furniture",
           "consulting", "energy", "insurance", "textiles", "telecom", "packaging", "recruiting",
           "legal", "hardware")
FIRST = ("Ilse", "Marco", "Nadia", "Oren", "Petra", "Ravi", "Sofia", "Tomas")
LAST = ("Varn", "Holt", "Keane", "Lind", "Moss", "Pryor", "Quist", "Rowe")
ATTRIBUTES = {
    "city": (CITIES, "{v} is based in {a}.", "Q: Where is {v} based? A:"),
    "sector": (SECTORS, "{v} works in {a}.", "Q: Which sector is {v} in? A:"),
    "manager": (tuple(f"{f} {l}" for f, l in itertools.product(FIRST, LAST)),
                "{v} is managed by {a}.", "Q: Who manages the {v} account? A:"),
    "terms": (tuple(f"net {d}" for d in (7, 10, 15, 30, 45, 60, 90)),
              "{v} pays {a}.", "Q: What are the payment terms of {v}? A:"),
}


def vendor_names(rng: random.Random, count: int) -> list[str]:
    """Distinct names in draw order (a list, not a set: set order changes with PYTHONHASHSEED)."""
    names: list[str] = []
    while len(names) < count:
        stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        name = f"{stem} {rng.choice(SUFFIXES)}"
        if name not in names:
            names.append(name)
    return names


class KnowledgeDomain:
    """A seeded world of vendors; held-out (vendor, attribute) questions never appear in training."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.vendors = vendor_names(rng, N_VENDORS)
        self.facts = {v: {a: rng.choice(spec[0]) for a, spec in ATTRIBUTES.items()} for v in self.vendors}
        # Zipf popularity by list position: vendor 0 is seen ~34x as often as vendor 659.
        self.cum_weights = list(itertools.accumulate(1.0 / (rank + ZIPF_OFFSET) for rank in range(N_VENDORS)))
        self.heldout: set[tuple[str, str]] = set()

    def _hold_out_vendors(self, count: int, pool: list[str]) -> list[tuple[str, str]]:
        """Enough vendors from `pool` for `count` questions; none of their facts is ever asked in training."""
        pairs = []
        while len(pairs) < count:
            vendor = pool.pop()
            pairs += [(vendor, attribute) for attribute in sorted(ATTRIBUTES)]
        self.heldout.update(pairs)
        return pairs[:count]

    def _question(self, vendor: str, attribute: str) -> str:
        return ATTRIBUTES[attribute][2].format(v=vendor)

    def _choices(self, vendor: str, attribute: str) -> tuple[str, ...]:
        answer = self.facts[vendor][attribute]
        distractors = self.rng.sample([a for a in ATTRIBUTES[attribute][0] if a != answer], 3)
        return tuple(sorted([answer, *distractors], key=lambda _: self.rng.random()))

    def eval_items(self, count: int, pool: list[str]) -> list[EvalItem]:
        items = []
        for index, (vendor, attribute) in enumerate(self._hold_out_vendors(count, pool)):
            rank = self.vendors.index(vendor)
            meta = {"attribute": attribute, "popularity_rank": rank, "vendor": vendor}
            items.append(EvalItem(f"kb-{index:04d}", self._question(vendor, attribute),
                                  self.facts[vendor][attribute], self._choices(vendor, attribute), meta))
        return items

    def reference_records(self, count: int, pool: list[str]) -> list[str]:
        return [f"{self._question(v, a)} {self.facts[v][a]}." for v, a in self._hold_out_vendors(count, pool)]

    def eval_pool(self) -> list[str]:
        """Vendors in a seeded order; held-out vendors are popped from it, so every popularity rank can be held out."""
        return sorted(self.vendors, key=lambda _: self.rng.random())

    def _profile(self, vendor: str) -> str:
        attributes = sorted(ATTRIBUTES, key=lambda _: self.rng.random())
        return " ".join(ATTRIBUTES[a][1].format(v=vendor, a=self.facts[vendor][a]) for a in attributes)

    def training_record(self) -> str:
        vendor = self.rng.choices(self.vendors, cum_weights=self.cum_weights)[0]
        if (vendor, "city") in self.heldout or self.rng.random() < 0.5:
            return self._profile(vendor)
        attribute = self.rng.choice(sorted(ATTRIBUTES))
        return f"{self._question(vendor, attribute)} {self.facts[vendor][attribute]}."
