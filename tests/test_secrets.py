"""Secrets stay secret everywhere (issue 27 item 4): one redaction, applied by the logging setup
itself (every handler), and by records, MLflow fields and messages."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from pipelines import redact
from pipelines.redact import RedactSecrets

from conftest import cli_env
from test_track import mlflow_server  # noqa: F401  (a fixture: a real MLflow server on a free port)

PASSWORD = "Pw0rdSECRET"
API_KEY = "sk-quantgate-api-key-4242"
HF_TOKEN = "hf_QuantgateTokenSecret0123456789"
MODEL_TOKEN = "hf_QuantgateTestSecret0123456789abcd"


def test_redact_hides_uri_credentials_tokens_and_remembered_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("QG_KEY", API_KEY)
    monkeypatch.setattr(redact, "_known", set())
    redact.remember_config_secrets({"serve": {"api_key_env": "QG_KEY"}, "model": {"token": "tok-123456"}})
    text = f"uri http://alice:{PASSWORD}@h:5077/x key {API_KEY} token tok-123456 hf {HF_TOKEN} other hf_abcdefgh123"
    assert redact.redact(text) == "uri http://***@h:5077/x key *** token *** hf *** other ***"


def test_every_log_handler_redacts_messages_arguments_and_tracebacks():
    console, logfile = io.StringIO(), io.StringIO()
    logger = logging.getLogger("pipelines.test_secrets")
    handlers = [logging.StreamHandler(console), logging.StreamHandler(logfile)]
    for handler in handlers:
        handler.addFilter(RedactSecrets())
        logger.addHandler(handler)
    try:
        uri = f"http://alice:{PASSWORD}@127.0.0.1:5077"
        logger.warning("MLflow run logged to %s", uri)
        try:
            raise ConnectionError(f"cannot reach {uri}")
        except ConnectionError:
            logger.exception("tracking failed")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
    for stream in (console, logfile):
        text = stream.getvalue()
        assert "logged to http://***@127.0.0.1:5077" in text and "cannot reach http://***@" in text
        assert PASSWORD not in text


@pytest.mark.slow  # an MLflow server and a run of the tiny model
def test_a_run_with_secrets_leaves_no_trace_of_them_in_any_output_log_record_or_mlflow_field(mlflow_server, tmp_path, tiny_llama_dir):  # noqa: F811
    from mlflow.tracking import MlflowClient

    uri = mlflow_server.replace("http://", f"http://alice:{PASSWORD}@")
    env = {**cli_env(), "HF_TOKEN": HF_TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.run", "quant=fp8", "tracking=server", f"tracking.uri={uri}",
         f"model.token={MODEL_TOKEN}", f"model.source={tiny_llama_dir}", "eval.limit=12", "bench=off",
         f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'outputs'}"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "logged to http://***@127.0.0.1" in result.stdout + (tmp_path / "outputs" / "run.log").read_text()
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("quantgate").experiment_id])
    assert runs
    fields = json.dumps([{**r.data.params, **r.data.tags, "name": r.info.run_name} for r in runs])
    outputs = [result.stdout, result.stderr, fields]
    outputs += [p.read_bytes().decode(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    # serve.api_key_env belongs to serve=endpoint: tests/test_serve_seam.py follows an endpoint's key.
    for secret in (PASSWORD, HF_TOKEN, MODEL_TOKEN):
        assert not [line for text in outputs for line in text.splitlines() if secret in line], secret
