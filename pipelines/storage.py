"""Atomic writes, content hashes and manifests: how every stage keeps what it computed.

A stage writes to a temporary name in the same directory, then renames; a run killed at any point
leaves either the old file or the new one, never half of one. A directory is complete when its
manifest exists, so a resumed sweep redoes only what has no manifest. The manifest lists every
file of the entry with its size and sha256, and `cache_entry` verifies them before an entry is
reused: one that changed on disk is moved aside with one warning naming the file, and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import secrets
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterator

from filelock import FileLock, Timeout

from pipelines.errors import InputError

log = logging.getLogger(__name__)

MANIFEST = "quantgate-manifest.json"
# The manifest's per-file table: {relative path: {"bytes": size, "sha256": hex digest}}.
FILES = "files"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not safe while other threads create files.
_UMASK = _read_umask()


def shareable(path: str | Path, directory: bool = False) -> None:
    """The mode a plain open() or mkdir() would give: mkstemp/mkdtemp make files 0600 and folders
    0700, which locks a team out of a shared cache and of each other's outputs."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        shareable(tmp)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes `final` only if the block finishes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    # 64 random bits: a name no other writer picks, so the cleanup below only ever removes our own.
    scratch = final.parent / f".{final.name}.{secrets.token_hex(8)}.partial"
    try:
        # Named before it is made, so a Ctrl-C landing anywhere after the mkdir still finds and
        # removes it (mkdtemp returns the name only after creating it: an interrupt in between leaks).
        scratch.mkdir()
        yield scratch
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch, final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def check_writable(directory: Path, option: str) -> None:
    """InputError naming the config option when `directory` cannot be created or written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(f"{option}={directory} is not writable ({error.strerror}); "
                         f"choose a writable directory with {option}=...") from None


def check_creatable(directory: Path, option: str) -> None:
    """InputError naming the config option when `directory` could not be created and written; creates nothing."""
    existing = next(p for p in [directory, *directory.parents] if p.exists() or p == p.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        raise InputError(f"{option}={directory} cannot be created: {existing} {why}; "
                         f"choose a writable directory with {option}=...")


def stable_hash(value: Any, length: int = 16) -> str:
    """Hash of a JSON-able value that does not depend on key order."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def hash_files(paths: list[Path], root: Path | None = None, length: int = 16) -> str:
    """Content hash of files (names relative to `root` included, so renames count)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root) if root else path.name).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def hash_directory(directory: Path, length: int = 16) -> str:
    files = [p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST]
    return hash_files(files, root=directory, length=length)


def directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """`manifest` plus the size and sha256 of every file now in `directory`, written last."""
    paths = _entry_files(directory)
    files = {_relative(path, directory): {"bytes": path.stat().st_size, "sha256": digest}
             for path, digest in zip(paths, sha256_files(paths))}
    return atomic_write_text(directory / MANIFEST,
                             json.dumps({**manifest, FILES: files}, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


@contextmanager
def cache_entry(directory: Path, overwrite: bool = False) -> Iterator[dict[str, Any] | None]:
    """Hold the entry's lock and yield its verified manifest, or None when it must be computed.

    Jobs sharing a cache_dir (a parallel sweep, cluster jobs on a shared disk) compute an entry once:
    the others wait on the lock, then reuse it. Compute and write the entry inside the block."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{directory}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # say why nothing happens: on a cluster the other job may be on another machine
        log.info("waiting for another job that is computing %s (lock %s)", directory, lock.lock_file)
        lock.acquire()
    try:
        yield None if overwrite else verified_manifest(directory)
    finally:
        lock.release()


def verified_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a finished entry whose files match it; None when there is no finished entry.

    An entry that does not match is moved aside (`<entry>.corrupt-<time>`) with one warning naming
    the file. A manifest from before per-file hashes gets them once (see `_upgrade`)."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        problem = None if isinstance(manifest, dict) else f"{path} is not a manifest"
    except (ValueError, UnicodeDecodeError):
        manifest, problem = None, f"{path} is not valid JSON"
    if problem is None and FILES in manifest and not _is_file_table(manifest[FILES]):
        problem = f"{path} has no table of files"
    if problem is None:
        problem = entry_problem(directory, manifest) if FILES in manifest else _upgrade(directory, manifest)
    if problem is None:
        return read_manifest(directory)
    moved = set_aside(directory)
    log.warning("%s; moved the cache entry aside to %s and computing it again", problem, moved.name)
    return None


def entry_problem(directory: Path, manifest: dict[str, Any]) -> str | None:
    """What differs between the entry's files and its manifest (the first file found), or None.

    Sizes, missing and added files are checked before any byte is hashed."""
    listed: dict[str, dict[str, Any]] = manifest[FILES]
    for name, facts in sorted(listed.items()):
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != facts["bytes"]:
            return f"{path} has {path.stat().st_size} bytes where its manifest says {facts['bytes']} (cut or edited)"
    # Hidden files (editor swap files, .DS_Store) are not part of any entry.
    added = [path for path in _entry_files(directory) if _relative(path, directory) not in listed
             and not any(part.startswith(".") for part in path.relative_to(directory).parts)]
    if added:
        return f"{added[0]} is not in its manifest (added after the entry was written)"
    names = sorted(listed)
    for name, digest in zip(names, sha256_files([directory / name for name in names])):
        if digest != listed[name]["sha256"]:
            return f"{directory / name} does not match its sha256 in the manifest (edited)"
    return None


def _is_file_table(files: Any) -> bool:
    return isinstance(files, dict) and all(isinstance(facts, dict) and {"bytes", "sha256"} <= facts.keys()
                                           for facts in files.values())


def _upgrade(directory: Path, manifest: dict[str, Any]) -> str | None:
    """An entry written before manifests listed files: checked against its content hash when it has one
    (checkpoints), and every JSON, JSON-lines and safetensors file for being whole; then given the
    per-file table. What a whole file says cannot be checked: it is trusted from now on."""
    if "content_hash" in manifest and hash_directory(directory) != manifest["content_hash"]:
        return f"the files of {directory} do not match the content_hash {manifest['content_hash']} of its manifest"
    problem = next(filter(None, map(_unreadable, _entry_files(directory))), None)
    if problem is None:
        log.info("cache entry %s predates per-file hashes: recording its files' sizes and sha256 now", directory)
        write_manifest(directory, manifest)
    return problem


def _unreadable(path: Path) -> str | None:
    """Why a file is not whole, judged by its format (a cut JSON or JSON line does not parse; a
    safetensors file is 8 bytes + its header + the data its header places), or None."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    json.loads(line)
        elif path.suffix == ".safetensors":
            return _safetensors_problem(path)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError):
        return f"{path} does not parse (cut or edited)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    data = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    if path.stat().st_size != 8 + length + data:
        return f"{path} has {path.stat().st_size} bytes where its header says {8 + length + data} (cut or edited)"
    return None


def set_aside(directory: Path) -> Path:
    """Rename a damaged entry out of the cache's way, keeping it for inspection."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = directory.with_name(f"{directory.name}.corrupt-{stamp}-{secrets.token_hex(2)}")
    os.replace(directory, moved)
    return moved


def sha256_files(paths: list[Path]) -> list[str]:
    """Hex sha256 of each file, several files at once: hashlib releases the GIL, so the shards of a
    large checkpoint hash in parallel (one core: ~0.9 GB/s; 16: ~13 GB/s, BENCHMARKS.md)."""
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return list(pool.map(_sha256_file, paths))


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _entry_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory) != Path(MANIFEST))


def _relative(path: Path, directory: Path) -> str:
    return path.relative_to(directory).as_posix()


def library_versions(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
