"""Secrets never leave the process: one redaction, used by the logging setup itself (every handler,
console and run.log), by records, MLflow params and tags, and by every error message.

What is a secret: `user:password@` in any URI, Hugging Face tokens (`hf_...`), config values under
secret-named keys (token, password, api_key, ...), the value of the environment variable an
`*_env` key names (serve.api_key_env), and HF_TOKEN / MLflow credentials from the environment.
Checked by tests/test_secrets.py, which greps every output of a run for them.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

REDACTED = "***"
SECRET_KEY = re.compile(r"(^|[_.-])(token|secret|password|passwd|api[_-]?key|access[_-]?key|credentials?)([_.-]|$)",
                        re.IGNORECASE)
_SECRET_PATTERNS = [(re.compile(r"hf_[A-Za-z0-9]{8,}"), REDACTED), (re.compile(r"//[^/@\s:]*:[^/@\s]+@"), "//***@")]
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# Shorter strings would blank out ordinary words; no real key or password is this short.
_MIN_SECRET_LENGTH = 6
_known: set[str] = set()


def redact(text: str) -> str:
    """`text` with every secret replaced by ***."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in sorted(_known | _environment_secrets(), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a nested config with secret-named keys and secret-looking values replaced by ***."""
    clean: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            clean[key] = redact_config(value)
        elif SECRET_KEY.search(str(key)) and value not in (None, "") and not str(key).endswith("_env"):
            clean[key] = REDACTED
        elif isinstance(value, str):
            clean[key] = redact(value)
        elif isinstance(value, list):
            clean[key] = [redact(v) if isinstance(v, str) else v for v in value]
        else:
            clean[key] = value
    return clean


def remember_config_secrets(config: dict[str, Any]) -> None:
    """Learn the secrets a config holds (or names, for `*_env` keys), so that `redact` hides them
    wherever they turn up later: a URL in an exception, a library's log line."""
    for key, value in config.items():
        if isinstance(value, dict):
            remember_config_secrets(value)
        elif isinstance(value, str) and SECRET_KEY.search(str(key)):
            remember(os.environ.get(value) if str(key).endswith("_env") else value)


def remember(secret: str | None) -> None:
    if secret and len(secret) >= _MIN_SECRET_LENGTH:
        _known.add(secret)


def _environment_secrets() -> set[str]:
    return {value for name in SECRET_ENV if len(value := os.environ.get(name, "")) >= _MIN_SECRET_LENGTH}


class RedactSecrets(logging.Filter):
    """On every handler: the record's message, arguments and traceback leave with secrets redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except (TypeError, ValueError):  # arguments that do not fit the format: logging reports it itself
            pass
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
