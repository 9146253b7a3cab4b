"""Open a sweep in the stock MLflow UI with headless Chromium: screenshots, page text, console errors.

    python benchmarks/mlflow_ui_screenshot.py --store sqlite:///mlruns/mlflow.db --out-dir mlflow-ui
    python benchmarks/mlflow_ui_screenshot.py --store sqlite:////tmp/x/mlflow.db --sweep nightly --max-runs 6

Needs Debian's `chromium` (`apt-get update && apt-get install -y chromium`). It finds the sweep's
parent run (tag quantgate.role=sweep; the newest, or the one named by --sweep), starts
`mlflow server` on 127.0.0.1 over the same store, and drives Chromium over the DevTools protocol
(aiohttp's websocket client; aiohttp comes with mlflow) through two pages: the runs list in the
view the tracker saves (`?viewStateShareKey=quantgate`: datasets, models, verdict tags, headline
metrics) and the compare view of the sweep's child runs. It writes `runs-list.png`,
`compare.png` and `report.json` (each page's visible text, console errors and failed requests)
to --out-dir; tests/test_mlflow_ui.py asserts on that report. Server and browser are stopped
whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
                  "--hide-scrollbars", "--remote-debugging-port=0"]
WIDTH, HEIGHT = 2400, 1000
VIEW_KEY = "quantgate"  # pipelines/track/describe.py VIEW_KEY: the runs-list view the tracker saves
# The UI's assistant side panel opens by default and hides half the runs table.
CLOSE_ASSISTANT = "document.querySelector('button[aria-label=\"Close\"]')?.click()"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


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


def absolute_store(store: str) -> str:
    """`store` with a relative SQLite path made absolute against the current directory; other URIs as given."""
    prefix = "sqlite:///"
    if not store.startswith(prefix) or store[len(prefix):].startswith("/"):
        return store
    return prefix + str(Path(store[len(prefix):]).resolve())


def start_server(store: str, port: int, workdir: Path) -> subprocess.Popen:
    # The server runs in `workdir`: a relative SQLite path would name a new, empty database there.
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", absolute_store(store),
               "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--artifacts-destination", str(workdir / "artifacts")]
    # Own session: the server forks workers, and stop() must be able to end them all.
    # No MLflow job runner (huey consumers): the UI needs none, and it slows start-up and shutdown.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)  # the process and the children it forked
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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


class Page:
    """One Chromium tab over the DevTools protocol; keeps every console error and failed request."""

    def __init__(self, ws) -> None:
        self.ws, self.next_id, self.errors = ws, 0, []

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._note(message)

    def _note(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append({"kind": "exception", "text": params["exceptionDetails"].get("text", "")
                                + " " + json.dumps(params["exceptionDetails"].get("exception", {}).get("description"))})
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append({"kind": "console", "text": " ".join(str(a.get("value", a.get("description")))
                                                                    for a in params["args"])})
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append({"kind": params["entry"]["source"], "text": params["entry"]["text"],
                                "url": params["entry"].get("url")})

    async def text(self) -> str:
        result = await self.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
        return result["result"].get("value") or ""

    async def visit(self, url: str, expect: list[str], timeout_s: float) -> str:
        """Open `url`, wait until every `expect` string is on the page (or timeout), return its text."""
        await self.call("Page.navigate", url=url)
        deadline, text = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            await self.call("Runtime.evaluate", expression=CLOSE_ASSISTANT)
            text = await self.text()
            if all(item in text for item in expect):
                await asyncio.sleep(2)  # let late cells and charts finish
                return await self.text()
        log.warning("page %s still lacks %s after %.0f s", url, [e for e in expect if e not in text], timeout_s)
        return text

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


async def browse(pages: dict[str, tuple[str, list[str]]], out_dir: Path, timeout_s: float) -> dict:
    """Visit each named (url, expected texts); screenshot `<name>.png`; return texts and errors."""
    import aiohttp

    chromium = chromium_path()
    if not chromium:
        sys.exit("chromium not found: apt-get update && apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        browser = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = _devtools_port(Path(profile), browser, timeout_s)
            targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Runtime", "Log", "Page"):
                    await page.call(f"{domain}.enable")
                await page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                                deviceScaleFactor=1, mobile=False)
                report = {"pages": {}, "errors": page.errors}
                for name, (url, expect) in pages.items():
                    report["pages"][name] = {"url": url, "text": await page.visit(url, expect, timeout_s)}
                    await page.screenshot(out_dir / f"{name}.png")
                return report
        finally:
            stop(browser)


def _devtools_port(profile: Path, browser: subprocess.Popen, timeout_s: float) -> int:
    marker, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            sys.exit(f"chromium exited with {browser.returncode}")
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.2)
    sys.exit(f"chromium opened no DevTools port in {timeout_s:.0f} s")


def run_names(store: str, run_ids: list[str]) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    return [client.get_run(run_id).info.run_name for run_id in run_ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="sqlite:///mlruns/mlflow.db", help="MLflow backend store URI")
    parser.add_argument("--sweep", default=None, help="sweep name (tag quantgate.sweep); default: the newest")
    parser.add_argument("--out-dir", type=Path, default=Path("mlflow-ui"))
    parser.add_argument("--max-runs", type=int, default=8)
    parser.add_argument("--page-timeout", type=float, default=90.0, help="seconds for one page to render")
    parser.add_argument("--server-timeout", type=float, default=120.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    experiment, runs = sweep_runs(args.store, args.sweep, args.max_runs)
    names = run_names(args.store, runs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pages = {"runs-list": (f"{url}/#/experiments/{experiment}/runs?viewStateShareKey={VIEW_KEY}",
                           [*names, "matching runs"]),
             "compare": (f"{url}/#/compare-runs?runs={quote(json.dumps(runs))}"
                         f"&experiments={quote(json.dumps([experiment]))}", names)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlflow-ui-") as workdir:
        server = start_server(args.store, port, Path(workdir))
        try:
            log.info("waiting for mlflow server on %s", url)
            wait_healthy(url, server, args.server_timeout)
            report = asyncio.run(browse(pages, args.out_dir, args.page_timeout))
        finally:
            stop(server)
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("saved %s: runs-list.png, compare.png, report.json (%d console errors)", args.out_dir,
             len(report["errors"]))


if __name__ == "__main__":
    main()
