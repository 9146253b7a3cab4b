"""Atomic writes, content hashes and manifests: how every stage keeps what it computed.

A stage writes to a temporary name in the same directory, then renames; a run killed at any point
leaves either the old file or the new one, never half of one. A directory is complete when its
manifest exists, so a resumed sweep redoes only what has no manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "quantgate-manifest.json"


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
    from pipelines.errors import InputError

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(f"{option}={directory} is not writable ({error.strerror}); "
                         f"choose a writable directory with {option}=...") from None


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
    return atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def library_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
