"""The serve seam without a real engine: lifecycle (ports, health wait, logs, always stopped, no
orphans), endpoint checks, served vs in-process agreement and its gate rule.

A fake server process (tests/fake_openai_server.py) stands in for vLLM's; the end-to-end runs
through a real vLLM server are in tests/test_served_e2e.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.errors import ConfigError, InputError
from pipelines.records import Fidelity, TaskAgreement, TaskFidelity, Variant
from pipelines.serve.process import ServerDied, free_port

from conftest import cli_env, interruptible

FAKE_SERVER = Path(__file__).with_name("fake_openai_server.py")


def fake_python(tmp: Path) -> Path:
    """An executable that serve.python can name: runs the fake server with vLLM's arguments."""
    script = tmp / "fake-python"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_SERVER} \"$@\"\n")
    script.chmod(0o755)
    return script


def config(tmp: Path, *overrides: str):
    from pipelines.pipeline import compose_config

    return compose_config([f"cache_dir={tmp / 'cache'}", "tracking=off", "bench=off", *overrides])


def variant(tmp: Path) -> Variant:
    return Variant(name="fp8", base="tiny", backend="llmcompressor", method="rtn", scheme="FP8_DYNAMIC",
                   checkpoint_dir=str(tmp / "ckpt"), size_bytes=1, content_hash="h", cache_key="k",
                   quantize_seconds=0.0, from_cache=False)


def pids(pidfile: Path) -> list[int]:
    return [int(p) for p in pidfile.read_text().split()]


def read_or_empty(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    return pidfile


@pytest.mark.slow
def test_vllm_server_lifecycle_stops_the_whole_group_even_on_error(tmp_path, fake_env):
    from pipelines.serve import make_server

    cfg = config(tmp_path, "serve=vllm", f"serve.python={fake_python(tmp_path)}", "serve.extra_args=[--x]")
    server = make_server(cfg)
    with pytest.raises(RuntimeError, match="boom"):
        with server.serve(variant(tmp_path), "variant", tmp_path / "run") as served:
            assert served.engine == "vllm" and served.engine_version == "0.0-fake" and served.model == "fp8"
            assert served.base_url.startswith("http://127.0.0.1:") and served.base_url.endswith("/v1")
            assert served.engine_args["dtype"] == "float32" and served.engine_args["enforce_eager"] is True
            assert all(alive(pid) for pid in pids(fake_env))
            raise RuntimeError("boom")
    assert not any(alive(pid) for pid in pids(fake_env)), "server or its worker outlived the with block"
    log = (tmp_path / "run" / "serve" / "variant.log").read_text()
    assert "--enforce-eager" in log and "--x" in log and "--dtype" in log
    assert "TMPDIR" in log  # the fake prints its temp dir: vLLM's leftovers go there, and go with it
    temp_dir = Path(log.split("TMPDIR=")[1].split()[0])
    assert temp_dir.name.startswith("qg-vllm-variant-") and not temp_dir.exists()


@pytest.mark.slow
def test_server_that_dies_gives_one_line_with_the_log_tail(tmp_path, fake_env, monkeypatch):
    from pipelines.serve import make_server

    monkeypatch.setenv("FAKE_DIE", "1")
    cfg = config(tmp_path, "serve=vllm", f"serve.python={fake_python(tmp_path)}")
    with pytest.raises(ServerDied) as error:
        with make_server(cfg).serve(variant(tmp_path), "base", tmp_path / "run"):
            pass
    message = str(error.value)
    assert "\n" not in message and "exited with 3" in message and "no kernel for this dtype" in message
    assert not any(alive(pid) for pid in pids(fake_env))


@pytest.mark.slow
def test_startup_timeout_stops_the_server(tmp_path, fake_env, monkeypatch):
    from pipelines.serve import make_server

    monkeypatch.setenv("FAKE_STARTUP_S", "60")
    cfg = config(tmp_path, "serve=vllm", f"serve.python={fake_python(tmp_path)}", "serve.startup_timeout_s=2")
    with pytest.raises(ServerDied, match="not ready within serve.startup_timeout_s=2"):
        with make_server(cfg).serve(variant(tmp_path), "base", tmp_path / "run"):
            pass
    assert not any(alive(pid) for pid in pids(fake_env))


@pytest.mark.slow
def test_sigterm_to_a_serving_process_leaves_no_server(tmp_path, fake_env):
    """A process inside `with serve(...)` (as the pipeline is) killed with SIGTERM stops its server."""
    script = tmp_path / "hold.py"
    script.write_text(
        "import sys, time\nfrom pathlib import Path\n"
        "from pipelines.pipeline import compose_config\nfrom pipelines.serve import make_server, sigterm_as_interrupt\n"
        "from pipelines.records import Variant\n"
        f"cfg = compose_config(['cache_dir={tmp_path / 'cache'}', 'tracking=off', 'serve=vllm', "
        f"'serve.python={fake_python(tmp_path)}'])\n"
        "v = Variant('fp8', 'b', 'x', 'rtn', None, 'ckpt', 1, 'h', 'k', 0.0, False)\n"
        "with sigterm_as_interrupt(), make_server(cfg).serve(v, 'variant', Path(sys.argv[1])):\n"
        "    print('ready', flush=True); time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE,
                               text=True, cwd=Path(__file__).parents[1])
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert not any(alive(pid) for pid in pids(fake_env))


def test_vllm_check_names_the_setup_command_and_the_w4a16_dtype(tmp_path):
    from pipelines.serve import check_serve

    with pytest.raises(ConfigError, match="pipelines.serve.install_vllm"):
        check_serve(config(tmp_path, "serve=vllm", "serve.python=/nonexistent/python"))
    with pytest.raises(ConfigError, match="serve.dtype=bfloat16"):
        check_serve(config(tmp_path, "serve=vllm", f"serve.python={sys.executable}", "quant=gptq"))
    check_serve(config(tmp_path, "serve=vllm", f"serve.python={sys.executable}", "quant=gptq",
                       "serve.dtype=bfloat16"))


@pytest.mark.slow
def test_endpoint_checks_urls_and_key_and_never_exposes_the_key(tmp_path, fake_env, monkeypatch):
    from pipelines.serve import check_serve, make_server

    with pytest.raises(ConfigError, match="serve.urls.base and serve.urls.variant"):
        check_serve(config(tmp_path, "serve=endpoint"))
    monkeypatch.delenv("QG_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="QG_TEST_KEY is not set"):
        check_serve(config(tmp_path, "serve=endpoint", "serve.urls.base=http://a/v1", "serve.urls.variant=http://b/v1",
                           "serve.api_key_env=QG_TEST_KEY"))
    secret = "sk-quantgate-test-secret"
    monkeypatch.setenv("FAKE_API_KEY", secret)
    port = free_port()
    server = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--port", str(port), "--served-model-name", "m"])
    try:
        _wait_for(f"http://127.0.0.1:{port}/v1", secret)
        url = f"http://127.0.0.1:{port}/v1"
        cfg = config(tmp_path, "serve=endpoint", f"serve.urls.base={url}", f"serve.urls.variant={url}",
                     "serve.api_key_env=QG_TEST_KEY", "serve.allow_same_endpoint=true", "serve.trust_endpoint=true")
        monkeypatch.setenv("QG_TEST_KEY", "wrong")
        with pytest.raises(InputError, match="HTTP 401"):
            with make_server(cfg).serve(variant(tmp_path), "base", tmp_path):
                pass
        monkeypatch.setenv("QG_TEST_KEY", secret)
        with make_server(cfg).serve(variant(tmp_path), "variant", tmp_path) as served:
            assert (served.model, served.engine, served.engine_version) == ("m", "endpoint", "0.0-fake")
            assert served.api_key == secret and secret not in repr(served)  # the key travels in the record
        from pipelines.track import resolved_config

        assert secret not in repr(resolved_config(cfg))
    finally:
        server.kill()
        server.wait()
        for pid in pids(fake_env)[1:]:
            os.kill(pid, signal.SIGKILL)


def test_one_endpoint_for_base_and_variant_is_refused_unless_allowed(tmp_path):
    from pipelines.serve import check_serve

    same = ["serve=endpoint", "serve.urls.base=http://h:8000/v1", "serve.urls.variant=http://h:8000/v1/"]
    with pytest.raises(ConfigError, match="judged against itself; point each at its own server"):
        check_serve(config(tmp_path, *same))
    check_serve(config(tmp_path, *same, "serve.allow_same_endpoint=true"))
    check_serve(config(tmp_path, *same, "serve.models.base=a", "serve.models.variant=b"))  # two models, one server


@pytest.fixture
def wrong_model_server(tmp_path, fake_env):
    """A server that answers as 'tiny' but serves another checkpoint (its root is elsewhere)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(FAKE_SERVER), "--port", str(port), "--served-model-name", "tiny",
                               "--model", str(tmp_path / "some-other-checkpoint")])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_for(url, None)
        yield url
    finally:
        server.kill()
        server.wait()
        for pid in pids(fake_env)[1:]:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # starts a (fake) server process
def test_an_endpoint_serving_another_checkpoint_is_refused_or_unverified(tmp_path, wrong_model_server):
    """Scoring is refused; trusted, the identity is recorded as unverified (the gate then never
    PROMOTEs: tests/test_gate.py::test_an_unverified_endpoint_holds_the_verdict_at_inconclusive)."""
    from pipelines.serve import make_server

    (tmp_path / "some-other-checkpoint").mkdir()
    other = config(tmp_path, "serve=endpoint", "serve.urls.base=http://127.0.0.1:1/v1",
                   f"serve.urls.variant={wrong_model_server}")
    with pytest.raises(InputError, match="not the variant checkpoint .*set serve.trust_endpoint=true"):
        with make_server(other).serve(variant(tmp_path), "variant", tmp_path):
            pass
    trusted = dataclasses.replace(other, serve=dataclasses.replace(other.serve, trust_endpoint=True))
    with make_server(trusted).serve(variant(tmp_path), "variant", tmp_path) as served:
        assert not served.identity_verified and "some-other-checkpoint" in served.identity
    # The same server, when its root is the variant's checkpoint, is verified.
    right = variant(tmp_path)
    right.checkpoint_dir = str(tmp_path / "some-other-checkpoint")
    with make_server(other).serve(right, "variant", tmp_path) as served:
        assert served.identity_verified and str(tmp_path / "some-other-checkpoint") in served.identity


@pytest.mark.slow  # a CLI run: preflight, quantization of the embedded model
def test_the_issues_false_promote_now_exits_2_with_records_that_agree(tmp_path, wrong_model_server):
    """Issue 27: both URLs at one server serving another checkpoint under the expected name ended
    PROMOTE, exit 0. Now the shared URL is refused up front; allowed, the wrong root is refused."""
    env = cli_env()
    command = [sys.executable, "-m", "pipelines.run", "serve=endpoint", f"serve.urls.base={wrong_model_server}",
               f"serve.urls.variant={wrong_model_server}", "bench=off", "tracking=off",
               f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    shared = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert shared.returncode == 2 and "judged against itself" in shared.stderr, shared.stderr[-2000:]
    allowed = subprocess.run([*command, "serve.allow_same_endpoint=true"], capture_output=True, text=True,
                             timeout=900, env=env, cwd=tmp_path)
    assert allowed.returncode == 2, allowed.stderr[-2000:]
    assert allowed.stderr.strip().splitlines()[-1].startswith("quantgate: error: endpoint ")
    assert "cannot tell that it serves" in allowed.stderr
    record = json.loads((tmp_path / "run" / "outcome.json").read_text())
    assert record["exit_code"] == 2 and record["verdict"] is None


def test_an_unreachable_endpoint_fails_preflight_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from pipelines import run

    for name in ("QUANTGATE_SWEEP_DIR", "QUANTGATE_PARENT_RUN_ID", "QUANTGATE_DEBUG"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    monkeypatch.setattr(sys, "argv", ["pipelines.run", "serve=endpoint", f"serve.urls.base={url}",
                                      f"serve.urls.variant={url}", "serve.models.variant=v", "tracking=off",
                                      f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        run.main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith(f"quantgate: error: endpoint {url} is not reachable"), err
    assert not (tmp_path / "run").exists()  # no config.yaml, no run.log


def test_agreement_pairs_items_by_doc_id():
    from pipelines.evaluate.agreement import compare_items

    def item(doc, score, prediction, choices=None):
        return {"doc_id": doc, "score": score, "prediction": prediction, "choice_loglikelihoods": choices}

    served = [item(0, 1.0, 1, [-2.0, -1.0]), item(1, 0.0, 0, [-1.0, -1.5]), item(2, 1.0, 0, [-0.5, -3.0])]
    local = [item(1, 1.0, 1, [-1.2, -1.1]), item(0, 1.0, 1, [-2.0, -1.00001])]
    result = compare_items("base", "t", served, local)
    assert (result.n, result.agreeing, result.agreement) == (2, 1, 0.5)
    assert result.max_loglikelihood_diff == pytest.approx(0.4)
    generated = compare_items("fp8", "g", [item(0, 1.0, "42"), item(1, 0.0, "7")],
                              [item(0, 1.0, "42"), item(1, 0.0, "8")])
    assert generated.agreeing == 1 and generated.max_loglikelihood_diff is None


def test_agreement_gate_rule_warns_or_blocks_as_configured(tmp_path):
    from pipelines.gate import decide

    task = TaskFidelity(task="t", metric="acc", n=100, base_score=0.8, variant_score=0.8, delta=0.0, ci_low=-0.005,
                        ci_high=0.005, confidence=0.95, mcnemar_p=1.0, right_to_wrong=0, wrong_to_right=0,
                        flip_rate=0.0)
    # 10 of 20: Clopper-Pearson [0.27, 0.73] lies below 0.95 (17 of 20 would straddle it: INCONCLUSIVE).
    low = TaskAgreement(model="fp8", task="t", n=20, agreeing=10, agreement=0.5, max_loglikelihood_diff=0.3)
    fidelity = Fidelity(variant="fp8", reference="base", variant_hash="v", reference_hash="b", settings_hash="s",
                        tasks=[task], divergence=None, agreement=[low])
    policy = config(tmp_path).gate
    warned = decide(policy, fidelity)
    assert warned.decision == "PROMOTE" and any("agreement[fp8/t] FAIL" in r for r in warned.reasons)
    blocking = decide(dataclasses.replace(policy, blocking=[*policy.blocking, "agreement"]), fidelity)
    assert blocking.decision == "REJECT"
    assert not [r for r in decide(policy, dataclasses.replace(fidelity, agreement=[])).rules if r.rule == "agreement"]


def _wait_for(base_url: str, key: str) -> None:
    from pipelines.serve.process import http_json

    for _ in range(100):
        try:
            http_json(f"{base_url}/models", key)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"fake server at {base_url} never came up")


def test_engine_identity_keys_the_eval_cache_and_ignores_the_instance(tmp_path):
    from pipelines.evaluate import requested_settings
    from pipelines.records import ServedModel
    from pipelines.storage import stable_hash

    cfg = config(tmp_path, "serve=vllm", f"serve.python={sys.executable}")
    served = ServedModel(base_url="http://127.0.0.1:1/v1", model="fp8", tokenizer_dir="t", engine="vllm",
                         engine_version="0.32.0", engine_args={"dtype": "float32", "port": 1})
    settings = requested_settings(cfg, None, served)
    assert settings["serve"] == {"engine": "vllm", "engine_version": "0.32.0", "engine_args": {"dtype": "float32"}}
    assert settings["runner"] == "local-completions"
    moved = dataclasses.replace(served, base_url="http://127.0.0.1:2/v1", engine_args={"dtype": "float32", "port": 2})
    assert stable_hash(requested_settings(cfg, None, moved)) == stable_hash(settings)
    for changed in (dataclasses.replace(served, engine_version="0.33.0"),
                    dataclasses.replace(served, engine_args={"dtype": "bfloat16"})):
        assert stable_hash(requested_settings(cfg, None, changed)) != stable_hash(settings)
    assert "serve" not in requested_settings(cfg, None)  # in-process keys stay as they were


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_the_pipeline_mid_run_leaves_no_server(tmp_path, sig):
    """The real CLI, serving through a (fake, hanging) vLLM server: SIGTERM or Ctrl-C mid-scoring."""
    pidfile = tmp_path / "pids"
    env = {**os.environ, "FAKE_PIDFILE": str(pidfile), "FAKE_HANG": "1", "PYTHONUNBUFFERED": "1"}
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "pipelines.run", "serve=vllm", f"serve.python={fake_python(tmp_path)}", "quant=none",
         "eval=quick", "eval.limit=2", "bench=off", "tracking=off", f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'outputs'}"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 600
        while not pidfile.exists() and time.monotonic() < deadline and pipeline.poll() is None:
            time.sleep(0.5)
        assert pidfile.exists(), pipeline.stderr.read()[-3000:] if pipeline.poll() is not None else "no server started"
        server_log = tmp_path / "outputs" / "serve" / "base.log"
        # Past the health wait: wait until a scoring request is in flight (the fake server says so, then hangs).
        while "hanging on POST" not in read_or_empty(server_log) and time.monotonic() < deadline \
                and pipeline.poll() is None:
            time.sleep(0.5)
        assert "hanging on POST" in read_or_empty(server_log), "no scoring request reached the server"
        assert all(alive(pid) for pid in pids(pidfile))
        pipeline.send_signal(sig)
        pipeline.wait(timeout=120)
        assert pipeline.returncode != 0
        assert not any(alive(pid) for pid in pids(pidfile)), "the server outlived the killed pipeline"
    finally:  # a failed run must not leave a server for later tests to find
        pipeline.kill()
        pipeline.wait()
        for pid in pids(pidfile) if pidfile.exists() else []:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
