"""Before/after check for a refactor: docs/testing.md, "Refactors keep verdicts: before/after check".

    benchmarks/before_after_runs.sh /path/to/before-checkout /tmp/ba/before
    benchmarks/before_after_runs.sh /path/to/after-checkout /tmp/ba/after
    python benchmarks/compare_runs.py /tmp/ba/before /tmp/ba/after

Each folder holds one subfolder per command (main, sweep, plan), each with the command's exit_code,
stdout.txt and outputs. Prints, per variant, what is identical and what differs: the fidelity record
(as `save_record` writes it, byte for byte), the verdict and its reasons, exit codes, variant hashes
and cache keys, evaluation settings and suite hashes, the cached per-item files, and the plan's output.
Timings differ between any two runs, and the bench and cost records derive from them: those are
compared by structure only (the same fields, the same levels). A field only one side has is listed
apart (a record that gained provenance fields). Exits 1 when anything beyond timings differs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

# Outcome fields measured in wall time, or derived from it: compared by structure only.
TIMED = ("bench", "base_bench", "cost", "base_cost", "stages")
TIMED_LEAVES = ("seconds", "quantize_seconds")
# Where the run or its checkout lies on disk: differs by folder, never by content.
LOCATIONS = ("output_dir", "base_variant.checkpoint_dir")
EXACT_SECTIONS = ("exit_code", "error", "verdict", "fidelity", "variant", "base_variant", "variant_eval",
                  "base_eval")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by its dotted path (list items by index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value:
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return {prefix: value}
    return {path: leaf for key, item in items
            for path, leaf in flatten(item, f"{prefix}.{key}" if prefix else key).items()}


def is_timed(path: str) -> bool:
    return path.split(".")[0] in TIMED or path.split(".")[-1] in TIMED_LEAVES


def outcomes(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each command's outcomes, named `<command>/<variant>`."""
    found = {}
    for path in sorted(run_dir.rglob("outcome.json")):
        outcome = json.loads(path.read_text())
        found[f"{path.relative_to(run_dir).parts[0]}/{outcome['variant_name']}"] = outcome
    return found


def record_bytes(record: Any) -> bytes:
    """A record as `pipelines.records.save_record` writes it."""
    return (json.dumps(record, indent=2, sort_keys=True, default=float) + "\n").encode()


def decision(outcome: dict[str, Any]) -> str | None:
    return outcome["verdict"]["decision"] if outcome["verdict"] else None


def compare_outcome(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    same_fidelity = record_bytes(before["fidelity"]) == record_bytes(after["fidelity"])
    lines = [f"fidelity JSON {'byte-identical' if same_fidelity else 'DIFFERS'}",
             f"verdict {decision(before)} / {decision(after)}, exit code {before['exit_code']} / {after['exit_code']}"]
    old, new = flatten(before), flatten(after)
    shared = old.keys() & new.keys()
    exact = [p for p in sorted(shared) if not is_timed(p) and p not in LOCATIONS]
    lines += [f"DIFFERS {p}: {old[p]!r} / {new[p]!r}" for p in exact if old[p] != new[p]]
    lines.append(f"identical: {sum(old[p] == new[p] for p in exact)} of {len(exact)} fields beyond timings "
                 f"({', '.join(s for s in EXACT_SECTIONS if s in before)})")
    timed = [p for p in shared if is_timed(p)]
    lines.append(f"timings: {len(timed)} fields on both sides, {sum(old[p] != new[p] for p in timed)} values differ"
                 " (expected: measured time)")
    lines += [f"only before: {p}" for p in sorted(old.keys() - new.keys())]
    lines += [f"only after: {p}" for p in sorted(new.keys() - old.keys())]
    return lines


def cache_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every cached evaluation item file and quantized weight file, by path in its cache."""
    patterns = ("*/.cache/quantgate/evals/*/*/items/*", "*/.cache/quantgate/evals/*/*/reference_logprobs*",
                "*/.cache/quantgate/variants/*/*/model.safetensors", "*/.cache/quantgate/variants/*/*/config.json")
    return {str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for pattern in patterns for path in sorted(run_dir.glob(pattern)) if path.is_file()}


def compare_caches(before: Path, after: Path) -> list[str]:
    old, new = cache_files(before), cache_files(after)
    same = sum(old[p] == new.get(p) for p in old)
    lines = [f"cache: {same} of {len(old)} item, log-prob, weight and config files byte-identical at the same keys"]
    lines += [f"DIFFERS cache file {p}" for p in sorted(old.keys() | new.keys()) if old.get(p) != new.get(p)]
    return lines


def compare_commands(before: Path, after: Path) -> list[str]:
    lines = []
    for command in sorted(p.name for p in before.iterdir() if (p / "exit_code").is_file()):
        codes = [(side / command / "exit_code").read_text().strip() for side in (before, after)]
        lines.append(f"{command}: exit code {codes[0]} / {codes[1]}" + ("" if codes[0] == codes[1] else "  DIFFERS"))
    plans = [(side / "plan" / "stdout.txt").read_text() for side in (before, after)]
    same = "identical" if plans[0] == plans[1] else "DIFFERS"
    lines.append(f"plan output {same} ({len(plans[0].splitlines())} lines)")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/compare_runs.py BEFORE_DIR AFTER_DIR", file=sys.stderr)
        return 2
    before, after = (Path(arg) for arg in argv)
    lines = compare_commands(before, after)
    old, new = outcomes(before), outcomes(after)
    lines += [f"only in {'before' if name in old else 'after'}: outcome {name}  DIFFERS"
              for name in sorted(old.keys() ^ new.keys())]
    for name in sorted(old.keys() & new.keys()):
        lines += [f"{name}:"] + [f"  {line}" for line in compare_outcome(old[name], new[name])]
    lines += compare_caches(before, after)
    print("\n".join(lines))
    return 1 if any("DIFFERS" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
