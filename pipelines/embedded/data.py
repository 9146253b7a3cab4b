"""Deterministic generator of the embedded model's domain data (no network).

From one seed it draws, in a fixed order: the held-out eval items of each bundled
suite, a held-out reference text (for KL divergence), a calibration text (for
quantizers) and an endless stream of training records that never contains a
held-out item. Regenerate the shipped files with:

    python -m pipelines.embedded.data            # writes evalsuites/qg_domain/data + pipelines/embedded/data
    python -m pipelines.embedded.data --out /tmp/qg-data
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from evalsuites import SUITES_DIR
from pipelines.embedded import CALIBRATION_TEXT, REFERENCE_TEXT
from pipelines.embedded.invoices import InvoiceDomain
from pipelines.embedded.items import EvalItem
from pipelines.embedded.knowledge import KnowledgeDomain
from pipelines.embedded.policies import PolicyDomain

DEFAULT_SEED = 1234
EVAL_ITEMS_PER_TASK = 600
REFERENCE_RECORDS_PER_DOMAIN = 60
CALIBRATION_PARAGRAPHS = 256
RECORDS_PER_PARAGRAPH = 4
# Share of training records per domain; knowledge gets most because facts need repetition.
DOMAIN_MIX = {"knowledge": 0.45, "invoices": 0.30, "policies": 0.25}
SUITE_DATA_DIR = SUITES_DIR / "qg_domain" / "data"


@dataclass
class DomainWorld:
    """Everything drawn from one seed, except the training stream (see `training_records`)."""

    domains: dict
    eval_sets: dict[str, list[EvalItem]]
    reference_text: str
    calibration_text: str
    mixing_rng: random.Random


def _domains(seed: int) -> dict:
    return {
        "knowledge": KnowledgeDomain(random.Random(f"{seed}-knowledge")),
        "invoices": InvoiceDomain(random.Random(f"{seed}-invoices")),
        "policies": PolicyDomain(random.Random(f"{seed}-policies")),
    }


def _eval_and_reference(domains: dict) -> tuple[dict[str, list[EvalItem]], list[str]]:
    knowledge, invoices, policies = domains["knowledge"], domains["invoices"], domains["policies"]
    pool = knowledge.eval_pool()
    eval_sets = {
        "qg_vendor_facts": knowledge.eval_items(EVAL_ITEMS_PER_TASK, pool),
        "qg_invoice_total": invoices.eval_items(EVAL_ITEMS_PER_TASK),
        "qg_policy_route": policies.eval_items(EVAL_ITEMS_PER_TASK),
    }
    reference = (knowledge.reference_records(REFERENCE_RECORDS_PER_DOMAIN, pool)
                 + invoices.reference_records(REFERENCE_RECORDS_PER_DOMAIN)
                 + policies.reference_records(REFERENCE_RECORDS_PER_DOMAIN))
    return eval_sets, reference


def build_world(seed: int = DEFAULT_SEED) -> DomainWorld:
    """Draw the held-out sets first so that the training stream can exclude them."""
    domains = _domains(seed)
    eval_sets, reference = _eval_and_reference(domains)
    random.Random(f"{seed}-reference").shuffle(reference)
    mixing_rng = random.Random(f"{seed}-mix")
    records = iter(_record_stream(domains, mixing_rng))
    paragraphs = ["\n".join(itertools.islice(records, RECORDS_PER_PARAGRAPH)) for _ in range(CALIBRATION_PARAGRAPHS)]
    return DomainWorld(domains, eval_sets, "\n".join(reference) + "\n", "\n\n".join(paragraphs) + "\n", mixing_rng)


def _record_stream(domains: dict, mixing_rng: random.Random) -> Iterator[str]:
    names, weights = list(DOMAIN_MIX), list(DOMAIN_MIX.values())
    while True:
        yield domains[mixing_rng.choices(names, weights)[0]].training_record()


def training_records(world: DomainWorld, count: int) -> list[str]:
    """The first `count` training records after the calibration text (same seed -> same list)."""
    return list(itertools.islice(_record_stream(world.domains, world.mixing_rng), count))


def write_eval_sets(eval_sets: dict[str, list[EvalItem]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for task, items in eval_sets.items():
        rows = (json.dumps(item.to_row(), sort_keys=True) for item in items)
        (out_dir / f"{task}.jsonl").write_text("\n".join(rows) + "\n")


def write_all(world: DomainWorld, suite_dir: Path, calibration: Path, reference: Path) -> None:
    write_eval_sets(world.eval_sets, suite_dir)
    calibration.parent.mkdir(parents=True, exist_ok=True)
    calibration.write_text(world.calibration_text)
    reference.write_text(world.reference_text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, help="write everything here instead of the shipped locations")
    args = parser.parse_args(argv)
    world = build_world(args.seed)
    if args.out:
        write_all(world, args.out, args.out / "calibration.txt", args.out / "reference.txt")
    else:
        write_all(world, SUITE_DATA_DIR, CALIBRATION_TEXT, REFERENCE_TEXT)
    print(f"wrote {sum(map(len, world.eval_sets.values()))} eval items, calibration and reference text")


if __name__ == "__main__":
    main()
