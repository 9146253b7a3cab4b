"""Screenshot the MLflow UI's compare view of one sweep's variants (headless Chromium), for docs.

    python benchmarks/mlflow_ui_screenshot.py --store sqlite:///mlruns/mlflow.db --out sweep.png
    python benchmarks/mlflow_ui_screenshot.py --store sqlite:////tmp/x/mlflow.db --sweep nightly --max-runs 6

Needs Debian's `chromium` (`apt-get update && apt-get install -y chromium`). It finds the sweep's
parent run (tag quantgate.role=sweep; the newest, or the one named by --sweep), starts
`mlflow server` on 127.0.0.1 over the same store, opens `#/compare-runs` for the sweep's child
runs and saves a PNG. The server is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import requests

log = logging.getLogger("mlflow_ui_screenshot")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1600,1000"]


def sweep_runs(store: str, sweep: str | None, max_runs: int) -> tuple[str, list[str]]:
    """(experiment id, child run ids) of the newest sweep, or of the sweep named `sweep`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = "tags.`quantgate.role` = 'sweep'" + (f" and tags.`quantgate.sweep` = '{sweep}'" if sweep else "")
    parents = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        sys.exit(f"no sweep run{' named ' + sweep if sweep else ''} in {store}")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=max_runs)
    return parent.info.experiment_id, [run.info.run_id for run in children]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store: str, port: int, workdir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--artifacts-destination", str(workdir / "artifacts")]
    # Own session: the server forks workers, and stop_server must be able to end them all.
    # No MLflow job runner (huey consumers): the UI needs none, and it slows start-up and shutdown.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it forked
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"mlflow server exited with {server.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    sys.exit(f"mlflow server at {url} not healthy after {timeout_s:.0f} s")


def screenshot(url: str, out: Path, wait_ms: int, timeout_s: float) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium not found: apt-get update && apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        # The compare view is a single-page app: give its JavaScript virtual time to fetch and render.
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out.resolve()}",
                   f"--virtual-time-budget={wait_ms}", url]
        browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            browser.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)  # chromium and the renderers it forked
            browser.wait()
            sys.exit(f"chromium did not finish in {timeout_s:.0f} s; try a smaller --wait-ms")
    if not out.is_file():
        sys.exit(f"chromium exited with {browser.returncode} and wrote no {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="sqlite:///mlruns/mlflow.db", help="MLflow backend store URI")
    parser.add_argument("--sweep", default=None, help="sweep name (tag quantgate.sweep); default: the newest")
    parser.add_argument("--out", type=Path, default=Path("mlflow-compare.png"))
    parser.add_argument("--max-runs", type=int, default=8)
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time for the page to render")
    parser.add_argument("--server-timeout", type=float, default=120.0)
    parser.add_argument("--browser-timeout", type=float, default=300.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    experiment, runs = sweep_runs(args.store, args.sweep, args.max_runs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    page = f"{url}/#/compare-runs?runs={quote(json.dumps(runs))}&experiments={quote(json.dumps([experiment]))}"
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as workdir:
        server = start_server(args.store, port, Path(workdir))
        try:
            log.info("waiting for mlflow server on %s", url)
            wait_healthy(url, server, args.server_timeout)
            log.info("screenshot of %d runs: %s", len(runs), page)
            screenshot(page, args.out, args.wait_ms, args.browser_timeout)
        finally:
            stop_server(server)
    log.info("saved %s", args.out)


if __name__ == "__main__":
    main()
