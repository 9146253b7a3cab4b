"""sha256 throughput of checkpoint-sized shards, one core vs many: BENCHMARKS.md, "Cache verification".

    python benchmarks/sha256_throughput.py 16      # 16 shards of 1 GiB in /tmp/qg-hash, removed after

Standard library only (runs on a bare GPU box): hashes the way pipelines/storage.py's `sha256_files`
does (hashlib.file_digest per file, a thread pool over files; hashlib releases the GIL). Files are
read once before timing, so this is sha256's speed with the page cache warm, not the disk's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_shards(directory: Path, count: int) -> list[Path]:
    block = os.urandom(64 << 20)
    for index in range(count):
        with (directory / f"model-{index:05d}.safetensors").open("wb") as handle:
            for part in range(16):  # 16 x 64 MiB, each block made distinct
                handle.write(bytes([index % 256, part]) + block[2:])
    return sorted(directory.glob("*.safetensors"))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    directory = Path("/tmp/qg-hash")
    directory.mkdir(exist_ok=True)
    try:
        paths = write_shards(directory, count)
        size = sum(path.stat().st_size for path in paths) / 1e9
        for path in paths:
            path.read_bytes()
        start = time.perf_counter()
        digest(paths[0])
        print(f"one core: {paths[0].stat().st_size / 1e9 / (time.perf_counter() - start):.2f} GB/s")
        for workers in sorted({min(8, os.cpu_count() or 1), min(16, os.cpu_count() or 1)}):
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(digest, paths))
            seconds = time.perf_counter() - start
            print(f"{workers} threads: {size:.1f} GB in {seconds:.2f} s = {size / seconds:.2f} GB/s")
    finally:
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
