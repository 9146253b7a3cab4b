"""Before/after check for a refactor: docs/testing.md, "Refactors keep verdicts: before/after check".

    benchmarks/before_after_runs.sh /path/to/before-checkout /tmp/ba/before
    benchmarks/before_after_runs.sh /path/to/after-checkout /tmp/ba/after
    python benchmarks/compare_runs.py /tmp/ba/before /tmp/ba/after

Each folder holds one subfolder per command (main, sweep, plan), each with the command's exit_code,
stdout.txt and outputs, and a file `checkout` naming the checkout the commands ran from. Prints, per
variant, what is identical and what differs: the fidelity record (as `save_record` writes it, byte
for byte), the verdict and its reasons, exit codes, variant hashes and cache keys, evaluation
settings and suite hashes, the cached per-item files, and the plan's output. Timings differ between
any two runs, and the bench and cost records derive from them: those are compared by structure only
(the same fields, the same levels). A field only one side has is listed apart (a record that gained
provenance fields). Exits 1 when anything beyond timings differs.
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
# The run's own folder (named by its start time): differs by run, never by content.
RUN_FOLDER = "output_dir"


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
    """Each command's outcomes, named `<command>/<variant>`; paths inside the checkout the runs came from
    (the file `checkout` names it) start with `<checkout>/`, so two checkouts' records compare."""
    checkout = read_or_missing(run_dir / "checkout").strip()
    found = {}
    for path in sorted(run_dir.rglob("outcome.json")):
        outcome = json.loads(path.read_text().replace(f'"{checkout}/', '"<checkout>/'))
        found[f"{path.relative_to(run_dir).parts[0]}/{outcome['variant_name']}"] = outcome
    return found


def record_bytes(record: Any) -> bytes:
    """A record as `pipelines.records.save_record` writes it."""
    return (json.dumps(record, indent=2, sort_keys=True, default=float) + "\n").encode()


def grouped(paths: set[str]) -> str:
    """Paths by their first two names, list indices dropped: `variant.shape (14 fields)`."""
    groups: dict[str, int] = {}
    for path in paths:
        key = ".".join(name for name in path.split(".") if not name.isdigit()).split(".")[:2]
        groups[".".join(key)] = groups.get(".".join(key), 0) + 1
    return ", ".join(f"{key} ({count})" for key, count in sorted(groups.items()))


def decision(outcome: dict[str, Any]) -> str | None:
    return outcome["verdict"]["decision"] if outcome["verdict"] else None


def compare_outcome(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    same_fidelity = record_bytes(before["fidelity"]) == record_bytes(after["fidelity"])
    lines = [f"fidelity JSON {'byte-identical' if same_fidelity else 'DIFFERS'}",
             f"verdict {decision(before)} / {decision(after)}, exit code {before['exit_code']} / {after['exit_code']}"]
    old, new = flatten(before), flatten(after)
    shared = old.keys() & new.keys()
    exact = [p for p in sorted(shared) if not is_timed(p) and p != RUN_FOLDER]
    lines += [f"DIFFERS {p}: {old[p]!r} / {new[p]!r}" for p in exact if old[p] != new[p]]
    lines.append(f"identical: {sum(old[p] == new[p] for p in exact)} of {len(exact)} fields beyond "
                 f"timings ({', '.join(sorted({p.split('.')[0] for p in exact}))})")
    timed = [p for p in shared if is_timed(p)]
    lines.append(f"timings: {len(timed)} fields on both sides, {sum(old[p] != new[p] for p in timed)} values differ"
                 " (expected: measured time)")
    for side, paths in (("before", old.keys() - new.keys()), ("after", new.keys() - old.keys())):
        lines += [f"only {side}: {grouped(paths)}"] if paths else []
    return lines


def cache_files(run_dir: Path) -> dict[str, str]:
    """sha256 of every cached evaluation item file and quantized weight file, by path in its cache."""
    patterns = ("*/.cache/quantgate/evals/*/*/items/*", "*/.cache/quantgate/evals/*/*/reference_logprobs*",
                "*/.cache/quantgate/variants/*/*/model.safetensors", "*/.cache/quantgate/variants/*/*/config.json")
    return {str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
            for pattern in patterns for path in sorted(run_dir.glob(pattern)) if path.is_file()}


def cache_keys(run_dir: Path) -> set[str]:
    """The cache's entries, named by their keys (a sweep's own folder, named by its start time, left out)."""
    patterns = ("*/.cache/quantgate/variants/*/*", "*/.cache/quantgate/evals/*/*", "*/.cache/quantgate/bench/*")
    return {str(path.relative_to(run_dir)) for pattern in patterns for path in run_dir.glob(pattern)
            if path.is_dir()}


def compare_caches(before: Path, after: Path) -> list[str]:
    keys = cache_keys(before), cache_keys(after)
    lines = [f"cache keys: {len(keys[0] & keys[1])} entries under the same keys (quantized checkpoints, evaluations, "
             "benchmarks)"]
    lines += [f"DIFFERS cache entry only in {side}: {key}" for side, extra in
              (("before", keys[0] - keys[1]), ("after", keys[1] - keys[0])) for key in sorted(extra)]
    old, new = cache_files(before), cache_files(after)
    same = sum(old[p] == new.get(p) for p in old)
    lines += [f"cache: {same} of {len(old)} item, log-prob, weight and config files byte-identical at the same keys"]
    lines += [f"DIFFERS cache file {p}" for p in sorted(old.keys() | new.keys()) if old.get(p) != new.get(p)]
    return lines


def read_or_missing(path: Path) -> str:
    return path.read_text() if path.is_file() else "(missing)"


def compare_commands(before: Path, after: Path) -> list[str]:
    lines = []
    for command in ("main", "sweep", "plan"):
        codes = [read_or_missing(side / command / "exit_code").strip() for side in (before, after)]
        lines.append(f"{command}: exit code {codes[0]} / {codes[1]}" + ("" if codes[0] == codes[1] else "  DIFFERS"))
    plans = [read_or_missing(side / "plan" / "stdout.txt") for side in (before, after)]
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
