"""A new serve backend is one module, one config file and one registry line, and plan, bench and
evaluate work with it.

The fake backend below is registered exactly as a real one is (tests/test_seams.py's `register`: its
module on the import path, its YAML in a folder given by `hydra.searchpath=[...]`, one entry in
registry.SERVERS); its schema holds its own fields and its class states its capabilities. Nothing
else in the package is edited for it. It points at servers that are already running: GuideLLM's mock
server for the bench, a fake OpenAI completions endpoint that demands the API key for evaluate.

Exercised by: pytest tests/test_serve_seam.py
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from pipelines import registry
from pipelines.cli import compose_all
from pipelines.errors import ConfigError
from test_bench_served import embedded_variant, mock_server  # noqa: F401  (GuideLLM's mock server, a fixture)
from test_seams import register

API_KEY = "sk-fake-seam-key-0451"

FAKE_MODULE = '''
"""serve=fake: an OpenAI-compatible server already running at serve.base_url (key in $serve.key_env)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from pipelines.config import ServeConfig
from pipelines.errors import ConfigError
from pipelines.records import ServedModel


@dataclass
class FakeServeConfig(ServeConfig):
    base_url: str = ""
    model: str = "fake-model"
    key_env: str | None = None


class FakeServer:
    libraries = ()
    config_schema = FakeServeConfig
    in_process = False
    starts_server = False

    def __init__(self, cfg):
        self.cfg = cfg

    @staticmethod
    def check(cfg):
        if not cfg.serve.base_url:
            raise ConfigError("serve.base_url is empty: give the fake server's URL")

    @contextlib.contextmanager
    def serve(self, variant, role, output_dir):
        serve = self.cfg.serve
        yield ServedModel(base_url=serve.base_url, model=serve.model, tokenizer_dir=variant.checkpoint_dir,
                          engine="fake", engine_version="1.0", engine_args={"flavour": "plain"},
                          identity="a fake server", api_key=os.environ.get(serve.key_env) if serve.key_env else None)
'''

FAKE_YAML = """\
    # @package _global_
    defaults:
      - /serve/fake_schema@serve
      - override /bench: served
    serve:
      name: fake
      backend: fake
      base_url: http://127.0.0.1:1/v1
    """


@pytest.fixture
def fake_serve(tmp_path, monkeypatch):
    """The three pieces; returns the overrides that pick serve=fake."""
    searchpath = register(tmp_path, monkeypatch, "serve", "fake", registry.SERVERS, FAKE_MODULE, "FakeServer",
                          FAKE_YAML)
    return ["serve=fake", searchpath, f"cache_dir={tmp_path / 'cache'}", "tracking=off"]


def test_plan_sizes_nothing_for_a_backend_that_does_not_start_its_servers(fake_serve, capsys):
    from pipelines.plan_report import print_plans

    configs = compose_all([*fake_serve, "plan=true"])
    assert type(configs[0].serve).__name__ == "FakeServeConfig" and configs[0].bench.engine == "openai"
    assert print_plans(configs) == 0
    assert "served by servers quantgate does not start (serve=fake): not sized here" in capsys.readouterr().out


def test_the_backends_own_schema_refuses_another_backends_field_naming_its_owner(fake_serve):
    with pytest.raises(ConfigError, match="Key 'tensor_parallel_size' not in 'FakeServeConfig' "
                                          r"\(serve.tensor_parallel_size is a field of the vllm serve backend"):
        compose_all([*fake_serve, "serve.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="Key 'base_url' not in 'VLLMServeConfig' .*of the fake serve backend"):
        compose_all([fake_serve[1], "serve=vllm", "serve.base_url=http://h/v1"])
    with pytest.raises(ConfigError, match="did you mean 'base_url'"):
        compose_all([*fake_serve, "serve.base_ur=http://h/v1"])


def test_a_backend_given_another_backends_config_is_refused(fake_serve):
    from pipelines.serve import check_serve

    (cfg,) = compose_all([*fake_serve, "serve.backend=vllm"])
    with pytest.raises(ConfigError, match=r"serve.backend=vllm does not take serve=fake's fields \(FakeServeConfig\)"):
        check_serve(cfg)


def served_through_the_seam(cfg, tmp_path):
    from pipelines.serve import check_serve, is_served, make_server

    check_serve(cfg)
    assert is_served(cfg)
    return make_server(cfg).serve(embedded_variant(), "variant", tmp_path)


@pytest.mark.slow  # GuideLLM in its own interpreter against its mock server (~35 s on 2 busy cores)
def test_the_served_bench_times_the_fake_backends_endpoint(fake_serve, mock_server, tmp_path):  # noqa: F811
    from pipelines.bench import run_benchmark

    (cfg,) = compose_all([*fake_serve, f"serve.base_url={mock_server.base_url}", "serve.model=tiny",
                          "bench.batch_sizes=[1]", "bench.requests_per_level=3", "bench.warmup_requests=0",
                          "bench.repeats=1", "bench.input_tokens=16", "bench.output_tokens=4"])
    with served_through_the_seam(cfg, tmp_path) as served:
        result = run_benchmark(cfg, embedded_variant(), served)
    assert [level.load for level in result.levels] == ["c1"] and result.levels[0].errored_requests == 0
    assert result.server == {"engine": "fake", "engine_version": "1.0", "engine_args": {"flavour": "plain"}}


class KeyedCompletions(http.server.BaseHTTPRequestHandler):
    """/v1/completions with echoed prompt log-probs (what lm-eval's loglikelihood reads), only with the key."""

    authorizations: list[str | None] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.authorizations.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._send(401, {"error": "unauthorized"})
        self._send(200, {"choices": [_echo(index, prompt) for index, prompt in enumerate(body["prompt"])]})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _echo(index: int, prompt: list[int]) -> dict:
    """Each prompt token's log-prob a fixed function of its id, then one generated token."""
    values = [None] + [-0.01 * (token % 13) for token in prompt[1:]] + [-1.0]
    top = [None] + [{"t": value} for value in values[1:]]
    return {"index": index, "text": "", "logprobs": {"token_logprobs": values, "top_logprobs": top}}


@pytest.fixture
def keyed_endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeyedCompletions)
    KeyedCompletions.authorizations = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.slow  # lm-eval scores 4 items through the endpoint (~3 s)
def test_evaluate_scores_through_the_fake_backend_with_the_key_its_served_record_carries(
        fake_serve, keyed_endpoint, tmp_path, monkeypatch):
    from pipelines.evaluate import run_evaluate

    monkeypatch.setenv("FAKE_SEAM_KEY", API_KEY)
    (cfg,) = compose_all([*fake_serve, f"serve.base_url={keyed_endpoint}", "serve.key_env=FAKE_SEAM_KEY",
                          "eval.tasks=[qg_vendor_facts]", "eval.limit=4", "eval.reference_text=null"])
    with served_through_the_seam(cfg, tmp_path) as served:
        assert API_KEY not in repr(served)
        result = run_evaluate(cfg, embedded_variant(), served)
    (task,) = result.tasks
    assert task.task == "qg_vendor_facts" and task.n == 4
    assert result.settings["serve"]["engine"] == "fake"
    assert KeyedCompletions.authorizations and set(KeyedCompletions.authorizations) == {f"Bearer {API_KEY}"}
    written = [p.read_bytes() for p in Path(cfg.cache_dir).rglob("*") if p.is_file()]
    assert written and not [blob for blob in written if API_KEY.encode() in blob]
