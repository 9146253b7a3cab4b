"""What verifying a cache entry costs: BENCHMARKS.md, "Cache verification".

    python benchmarks/cache_verify.py                # the embedded model's files + a 1 GiB synthetic entry
    python benchmarks/cache_verify.py --gib 4        # a bigger synthetic entry

Times `storage.write_manifest` (size + sha256 of every file, once when an entry is written) and
`storage.verified_manifest` (the check before every reuse) on a copy of the embedded model (the
size of a checkpoint entry here) and on a synthetic entry of random bytes in 256 MiB files (what a
real checkpoint's shards look like to sha256). Files are read once before timing, so the page cache
holds them: this is sha256's speed, not the disk's (a cold read of a real checkpoint adds the
disk's read time, which loading the checkpoint pays anyway). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipelines import storage
from pipelines.embedded import resolve_source

SHARD = 256 << 20


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def synthetic_entry(directory: Path, gib: float) -> None:
    directory.mkdir()
    remaining, index = int(gib * (1 << 30)), 0
    while remaining > 0:
        size = min(SHARD, remaining)
        (directory / f"model-{index:05d}.safetensors").write_bytes(os.urandom(size))
        remaining, index = remaining - size, index + 1


def measure(directory: Path) -> tuple[int, int, float, float]:
    files = [p for p in directory.rglob("*") if p.is_file()]
    for path in files:  # warm the page cache
        path.read_bytes()
    size = sum(p.stat().st_size for p in files)
    write = timed(storage.write_manifest, directory, {"stage": "benchmark"})
    verify = timed(storage.verified_manifest, directory)
    return len(files), size, write, verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the synthetic entry in GiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        embedded = Path(scratch) / "embedded"
        shutil.copytree(resolve_source("embedded", "model"), embedded)
        synthetic = Path(scratch) / "synthetic"
        synthetic_entry(synthetic, args.gib)
        print("| entry | files | MB | write manifest s | verify s | verify MB/s |\n|---|---|---|---|---|---|")
        for name, directory in (("embedded model", embedded), (f"synthetic {args.gib:g} GiB", synthetic)):
            count, size, write, verify = measure(directory)
            print(f"| {name} | {count} | {size / 1e6:.1f} | {write:.3f} | {verify:.3f} | {size / 1e6 / verify:.0f} |")


if __name__ == "__main__":
    main()
