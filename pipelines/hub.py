"""Base models from the Hugging Face hub: access checked first, disk checked next, then a resumable download.

    python -m pipelines.run model=llama3-8b quant=fp8      (fetches meta-llama/Meta-Llama-3-8B-Instruct)

Files land in the Hugging Face cache (HF_HUB_CACHE / HF_HOME), so every tool on the machine shares them;
huggingface_hub shows a progress bar per file and resumes an interrupted download from its
`.incomplete` file when the command is run again. Every hub failure is one line naming the fix.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipelines.config import ModelConfig
from pipelines.embedded import is_embedded
from pipelines.errors import InputError

log = logging.getLogger(__name__)

PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
GB = 1e9


def is_hub_id(source: str) -> bool:
    """A model.source that names a hub repository: not the embedded model, not an absolute or ./ path."""
    return not is_embedded(source) and not (Path(source).expanduser().is_absolute() or source.startswith("."))


def allow_patterns(model: ModelConfig) -> list[str]:
    return PATTERNS + (["*.bin"] if model.allow_pickle else [])


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_directory() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_error(model: ModelConfig, error: Exception) -> InputError:
    """The one line a user acts on, for each way the hub refuses."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    source = model.source
    if isinstance(error, GatedRepoError):
        return InputError(f"model.source={source} is gated and the token has no access: accept its license at "
                          f"https://huggingface.co/{source} and set HF_TOKEN (or model.token) to that account's token")
    if isinstance(error, RevisionNotFoundError):
        return InputError(f"model.revision={model.revision} does not exist in {source}; set an existing branch, "
                          "tag or commit")
    if isinstance(error, RepositoryNotFoundError):
        return InputError(f"model.source={source} was not found on the hub or is private: check the id, or set "
                          "HF_TOKEN (or model.token) to a token that can read it")
    return InputError(f"model.source={source} could not be fetched from the hub ({type(error).__name__}); "
                      "download it and set model.source=/path/to/dir")


def check_access(model: ModelConfig) -> None:
    """Gated, private, missing or unreachable: known in a fraction of a second, before anything is written."""
    from huggingface_hub import auth_check

    try:
        auth_check(model.source, token=model.token)
    except Exception as error:  # the hub client raises many types; each maps to one line
        raise hub_error(model, error) from error


def pending_download_bytes(model: ModelConfig) -> int:
    """Bytes still to fetch (files already complete in the cache count 0), from a dry run: no file is written."""
    from huggingface_hub import snapshot_download

    try:
        files = snapshot_download(model.source, revision=model.revision, allow_patterns=allow_patterns(model),
                                  token=model.token, dry_run=True)
    except Exception as error:  # as in check_access
        raise hub_error(model, error) from error
    return sum(info.file_size or 0 for info in files if info.will_download)


def free_bytes(directory: Path) -> int:
    """Free space on the filesystem that holds `directory` (or would, once created)."""
    return shutil.disk_usage(_existing(directory)).free


def check_free_space(directory: Path, needed: float, what: str, fix: str) -> None:
    free = free_bytes(directory)
    if needed > free:
        raise InputError(f"{what} needs {needed / GB:.1f} GB in {directory} but {free / GB:.1f} GB are free; {fix}")


def download(model: ModelConfig) -> Path:
    """The model's files in the Hugging Face cache: checked, sized, then fetched with progress bars."""
    from huggingface_hub import snapshot_download

    if offline():
        try:
            return Path(snapshot_download(model.source, revision=model.revision, local_files_only=True,
                                          allow_patterns=allow_patterns(model)))
        except Exception as error:  # not cached: offline mode cannot fetch it
            raise InputError(f"HF_HUB_OFFLINE=1 and model.source={model.source} is not in the Hugging Face cache "
                             f"({cache_directory()}); download it or set model.source=/path/to/dir") from error
    check_access(model)
    pending = pending_download_bytes(model)
    check_free_space(cache_directory(), pending, f"downloading {model.source}",
                     "free space or set HF_HUB_CACHE to a larger disk")
    if pending:
        log.info("downloading %s: %.1f GB into %s (interrupted? run again to resume)", model.source,
                 pending / GB, cache_directory())
    try:
        return Path(snapshot_download(model.source, revision=model.revision, allow_patterns=allow_patterns(model),
                                      token=model.token))
    except Exception as error:  # network drop mid-download: the rerun resumes
        raise hub_error(model, error) from error


def check_access_and_room(model: ModelConfig, cache_dir: Path, variant_bytes: float, variant: str) -> None:
    """Preflight: the hub lets this token read the model, and the disks hold its download and the variant."""
    download = 0
    if is_hub_id(model.source) and not offline():
        check_access(model)
        download = pending_download_bytes(model)
    if download and _same_filesystem(cache_dir, cache_directory()):
        check_free_space(cache_dir, download + variant_bytes, f"the download ({download / GB:.1f} GB) and the "
                         f"{variant} variant", "free space, or set HF_HUB_CACHE / cache_dir to a larger disk")
        return
    check_free_space(cache_directory(), download, f"downloading {model.source}",
                     "free space or set HF_HUB_CACHE to a larger disk")
    check_free_space(cache_dir, variant_bytes, f"the {variant} variant (~{variant_bytes / GB:.1f} GB)",
                     "free space or set cache_dir to a larger disk")


def _same_filesystem(first: Path, second: Path) -> bool:
    return _existing(first).stat().st_dev == _existing(second).stat().st_dev


def _existing(directory: Path) -> Path:
    """`directory`, or its nearest existing parent: where it would be created."""
    path = Path(directory).expanduser().resolve()
    while not path.exists():
        path = path.parent
    return path
