"""Served truth end to end through a real vLLM server (the CPU build from `python -m pipelines.serve.install_vllm`):
base + fp8 scored through vLLM, agreement with in-process scoring reported and gated, benchmarked
with GuideLLM at two load levels, logged to MLflow; and serve=endpoint pointed at a vLLM server
this test starts itself.

Skipped (with the reason) when the vLLM environment is absent, so developer runs without it pass;
.ci/run builds it first. Set QUANTGATE_VLLM_PYTHON to use a vLLM Python elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import cli_command

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("QUANTGATE_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
EMBEDDED = REPO / "pipelines" / "embedded" / "tiny-llama"
ITEMS = 20  # per task: every item is scored both ways, so agreement covers the whole run
# Two load levels, few short requests: the path is what is tested here; BENCHMARKS.md has real numbers.
# Two paired rounds: base and variant servers alternate, so the records carry ratios with intervals.
SERVED_BENCH = ["bench=served", "bench.batch_sizes=[1,4]", "bench.requests_per_level=8", "bench.warmup_requests=1",
                "bench.output_tokens=8", "bench.input_tokens=32", "bench.repeats=2"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.access(VLLM_PYTHON, os.X_OK),
    reason=f"vLLM environment absent ({VLLM_PYTHON}); set it up with `python -m pipelines.serve.install_vllm`")]


def cli(args: list[str], tmp: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    command, env = cli_command([*args, "eval=quick", f"eval.limit={ITEMS}", f"serve.agreement_items={ITEMS}"], tmp)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)


def outcome(tmp: Path) -> dict:
    return json.loads((tmp / "outputs" / "outcome.json").read_text())


def vllm_processes() -> list[str]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = stat.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "vllm.entrypoints.openai.api_server" in command and str(REPO) in command:
            found.append(command)
    return found


def test_fp8_scored_through_vllm_agrees_with_in_process_and_is_gated_and_logged(tmp_path):
    result = cli(["serve=vllm", f"serve.python={VLLM_PYTHON}", "quant=fp8", *SERVED_BENCH], tmp_path)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    record = outcome(tmp_path)
    assert record["error"] is None, record["error"]
    serve = record["variant_eval"]["settings"]["serve"]
    assert serve["engine"] == "vllm" and serve["engine_version"].startswith("0.32")
    assert serve["engine_args"]["dtype"] == "float32"
    assert record["base_eval"]["settings"]["serve"] == serve  # same engine, version and args for both
    assert record["variant_eval"]["settings"]["add_bos_token"] is True  # BOS stated, never dropped
    agreement = {(a["model"], a["task"]): a for a in record["fidelity"]["agreement"]}
    assert {model for model, _ in agreement} == {"base", "fp8"} and len(agreement) == 8
    for (model, task), a in agreement.items():
        assert a["n"] == ITEMS
        if model == "base":  # float32: served and in-process scoring agree item for item
            assert a["agreeing"] == ITEMS, (task, a)
    assert any(r["rule"] == "agreement" for r in record["verdict"]["rules"])
    for bench in (record["base_bench"], record["bench"]):  # GuideLLM through both servers, paired
        assert [level["load"] for level in bench["levels"]] == ["c1", "c4"]
        assert bench["server"]["engine"] == "vllm" and all(lv["errored_requests"] == 0 for lv in bench["levels"])
        assert all(lv["repeats"] == 2 for lv in bench["levels"])
    assert record["bench"]["pairing_id"] == record["base_bench"]["pairing_id"] is not None
    assert [ratio["load"] for ratio in record["bench"]["ratios"]] == ["c1", "c4"]
    assert record["cost"]["saving_vs_base"]["rounds"] == 2
    assert (tmp_path / "outputs" / "serve" / "variant.log").is_file()
    assert not vllm_processes(), "a vLLM server outlived the run"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quantgate")
    run = next(r for r in client.search_runs([experiment.experiment_id])
               if r.data.tags.get("quantgate.quant") == "fp8")
    assert run.data.tags["quantgate.serve.engine"] == "vllm"
    assert run.data.metrics["agreement/base/qg_policy_route/agreement"] == 1.0
    # The knee itself depends on the machine's speed (no level may meet the SLO on a loaded one).
    assert {"gate/decision", "bench/c1/ttft_p95_ms", "bench/c4/tpot_p99_ms", "bench/c4/goodput_rps"} <= set(
        run.data.metrics)


def test_endpoint_backend_scores_a_server_started_outside_the_pipeline(tmp_path):
    from pipelines.serve.process import free_port

    port = free_port()
    # vLLM's IPC sockets live in TMPDIR and a Unix socket path has at most 107 bytes: not under tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="qg-endpoint-"))
    env = {**os.environ, "TMPDIR": str(temp), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vc")}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(EMBEDDED),
                               "--served-model-name", "tiny", "--port", str(port), "--host", "127.0.0.1",
                               "--dtype", "float32", "--enforce-eager"], stdout=log, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1", server, tmp_path / "server.log")
        url = f"http://127.0.0.1:{port}/v1"
        # The base against itself: no flip, but 20 items per task cannot certify a 2-point bound, so the
        # gate says INCONCLUSIVE; with gate.inconclusive_blocks=false that exits 0.
        result = cli(["serve=endpoint", f"serve.urls.base={url}", f"serve.urls.variant={url}", "quant=none",
                      "serve.allow_same_endpoint=true", "bench=off", "gate.inconclusive_blocks=false"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        record = outcome(tmp_path)
        assert record["variant_eval"]["settings"]["serve"]["engine"] == "endpoint"
        # vLLM lists the embedded checkpoint as the model's root: the identity was checked, and recorded.
        assert record["variant_eval"]["served_identity_verified"] and str(EMBEDDED) in record["variant_eval"]["served_identity"]
        assert all(a["agreeing"] == a["n"] == ITEMS for a in record["fidelity"]["agreement"])
        assert server.poll() is None  # an endpoint is someone else's server: the pipeline leaves it running
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_ready(base_url: str, server: subprocess.Popen, log: Path) -> None:
    from pipelines.serve.process import http_json

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if http_json(f"{base_url}/models").get("data"):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"vLLM never became ready: {log.read_text()[-3000:]}")
