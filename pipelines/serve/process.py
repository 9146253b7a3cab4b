"""Process and HTTP plumbing shared by serve backends: free ports, health waits, clean shutdown.

Exercised by: pytest tests/test_serve.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.errors import InputError

POLL_S = 1.0
STOP_GRACE_S = 20.0


class ServerDied(RuntimeError):
    """A server exited or never became ready; the message carries its log's tail."""


def free_port() -> int:
    """A port the OS has just handed out, released for the server to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 6) -> str:
    """The last non-empty lines of a server log, joined on one line (for a one-line error)."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    tail = [line.strip() for line in text if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(empty log)"


def http_json(url: str, api_key: str | None = None, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body.strip() else {}


def root_url(base_url: str) -> str:
    """http://h:p/v1 -> http://h:p (where /health and /version live on vLLM and SGLang)."""
    return base_url.rstrip("/").removesuffix("/v1")


def wait_until_ready(base_url: str, process: subprocess.Popen, timeout_s: float, log_path: Path,
                     engine: str) -> dict[str, Any]:
    """Poll until the server lists a model; returns its /version answer ({} if it has none)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerDied(f"{engine} exited with {process.returncode} before it was ready; log {log_path}: "
                             f"{log_tail(log_path)}")
        try:
            models = http_json(f"{base_url}/models", timeout=5.0)
            if models.get("data"):
                return server_version(base_url)
        except (OSError, ValueError):  # not listening yet, or half-started
            pass
        time.sleep(POLL_S)
    raise ServerDied(f"{engine} was not ready within serve.startup_timeout_s={timeout_s:g} s; log {log_path}: "
                     f"{log_tail(log_path)}")


def server_version(base_url: str, api_key: str | None = None) -> dict[str, Any]:
    try:
        answer = http_json(f"{root_url(base_url)}/version", api_key, timeout=5.0)
        return answer if isinstance(answer, dict) else {}
    except (OSError, ValueError):
        return {}


def check_endpoint(base_url: str, model: str | None, api_key: str | None) -> list[dict[str, Any]]:
    """The models an OpenAI-compatible endpoint lists (`id`, and vLLM's `root`: the checkpoint it
    loaded); a one-line error if it cannot be reached or does not serve `model`."""
    try:
        answer = http_json(f"{base_url.rstrip('/')}/models", api_key, timeout=5.0)
    except urllib.error.HTTPError as error:
        raise InputError(f"endpoint {base_url} answered /models with HTTP {error.code}; check the URL and "
                         "serve.api_key_env") from None
    except (OSError, ValueError) as error:
        raise InputError(f"endpoint {base_url} is not reachable ({error}); check serve.urls") from None
    entries = [entry for entry in answer.get("data", []) if isinstance(entry, dict)]
    names = [entry.get("id") for entry in entries]
    if model is not None and model not in names:
        raise InputError(f"endpoint {base_url} does not serve model '{model}' (it serves {names}); "
                         "check serve.models")
    return entries


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's whole process group (engine workers included), SIGKILL what remains.

    The server was started with start_new_session=True, so its group id is its pid, and stays so
    after the leader has died and been reaped while its workers live on."""
    group = process.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not _group_alive(group):
            break
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(group):
            process.poll()  # reap the leader so the group can empty
            time.sleep(0.2)
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts for killpg(0): treat the group as gone once only zombies remain.
    return any(_is_live(pid) for pid in _group_members(group))


def _group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == group:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def _is_live(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"
