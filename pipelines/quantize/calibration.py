"""Calibration texts for data-driven quantization (GPTQ, AWQ, SmoothQuant), from config.

`quant.calibration.source` is "embedded" (the shipped domain text), a local .txt (paragraphs
separated by blank lines) or .jsonl (one object per line, text in `text_field`), or
"hf:<dataset>[:<config>]" (needs hub access). With `chat_template: true` the field holds chat messages
([{role, content}, ...], e.g. ultrachat_200k's `messages`) rendered with the base model's chat template,
as llm-compressor's examples calibrate. Exercised by `python -m pipelines.run quant=gptq`.
An empty set is refused here: llm-compressor would otherwise fail deep inside with
"num_samples should be a positive integer value".
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from pipelines.config import CalibrationConfig
from pipelines.embedded import resolve_source
from pipelines.errors import InputError
from pipelines.models import load_tokenizer
from pipelines.storage import hash_files, stable_hash

log = logging.getLogger(__name__)

HUB_PREFIX = "hf:"
FIX = "set quant.calibration.source=embedded or to a .txt (blank-line separated) / .jsonl file"


def load_calibration(cal: CalibrationConfig, tokenizer_dir: Path | None = None) -> list[str]:
    """The first `cal.num_samples` non-empty texts of the configured source.

    Chat messages are rendered with the tokenizer in `tokenizer_dir`; without one (preflight, before
    the model is fetched) they are only checked and returned as JSON.
    """
    if cal.source.startswith(HUB_PREFIX):
        rows, where = _hub_texts(cal), cal.source
    else:
        path = _local_path(cal.source)
        rows, where = _file_texts(path, cal), str(path)
    texts = _render(rows[: cal.num_samples], tokenizer_dir) if cal.chat_template else rows
    texts = [text for text in (t.strip() for t in texts) if text][: cal.num_samples]
    if not texts:
        raise InputError(f"calibration source {where} has no usable texts; {FIX}")
    log.info("calibration: %d texts from %s", len(texts), where)
    return texts


def calibration_provenance(cal: CalibrationConfig) -> tuple[str, str]:
    """(source, content hash) of the calibration data, for the Variant record: the resolved file and its
    hash, or `hf:<dataset>` and the hash of the calibration settings (hub rows are not hashed offline)."""
    if cal.source.startswith(HUB_PREFIX):
        return cal.source, stable_hash(dataclasses.asdict(cal))
    path = _local_path(cal.source)
    return str(path.resolve()), hash_files([path])


def _local_path(source: str) -> Path:
    path = resolve_source(source, "calibration")
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist; {FIX}")
    if path.suffix not in {".txt", ".jsonl"}:
        raise InputError(f"calibration file {path} is neither .txt nor .jsonl; {FIX}")
    return path


def _usable(value, cal: CalibrationConfig) -> bool:
    if cal.chat_template:
        return isinstance(value, list) and bool(value) and all(
            isinstance(turn, dict) and isinstance(turn.get("content"), str) and "role" in turn for turn in value)
    return isinstance(value, str) and bool(value.strip())


def _render(conversations: list, tokenizer_dir: Path | None) -> list[str]:
    if tokenizer_dir is None:
        return [json.dumps(messages) for messages in conversations]
    tokenizer = load_tokenizer(tokenizer_dir)
    if not tokenizer.chat_template:
        raise InputError(f"the tokenizer in {tokenizer_dir} has no chat template; set "
                         "quant.calibration.chat_template=false and a plain-text quant.calibration.text_field")
    texts = [tokenizer.apply_chat_template(messages, tokenize=False) for messages in conversations]
    # llm-compressor tokenizes with special tokens, so a BOS already in the template would be doubled.
    bos = tokenizer.bos_token
    return [text[len(bos):] if bos and text.startswith(bos) else text for text in texts]


def _file_texts(path: Path, cal: CalibrationConfig) -> list:
    content, text_field = path.read_text(encoding="utf-8"), cal.text_field
    if path.suffix == ".txt":
        if cal.chat_template:
            raise InputError(f"calibration file {path} is plain text but quant.calibration.chat_template=true; "
                             "give a .jsonl of chat messages or set quant.calibration.chat_template=false")
        return content.split("\n\n")
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number} is not valid JSON ({error.msg}); fix or remove that line") from error
        if isinstance(row, dict) and _usable(row.get(text_field), cal):
            texts.append(row[text_field])
    if content.strip() and not texts:
        kind = "chat-message ([{role, content}, ...])" if cal.chat_template else "string"
        raise InputError(f"{path} has no rows with a {kind} field '{text_field}'; "
                         "set quant.calibration.text_field (and chat_template) to match the data")
    return texts


def _hub_texts(cal: CalibrationConfig) -> list:
    import datasets

    name, _, config = cal.source[len(HUB_PREFIX):].partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split=cal.split)
    except Exception as error:  # datasets raises many types; all mean "not loadable from here"
        raise InputError(f"calibration dataset {cal.source} (split {cal.split}) could not be loaded "
                         f"({type(error).__name__}); download it to a .jsonl file and point "
                         "quant.calibration.source at it") from error
    if cal.text_field not in rows.column_names:
        raise InputError(f"calibration dataset {cal.source} has no column '{cal.text_field}' "
                         f"(columns: {', '.join(rows.column_names)}); set quant.calibration.text_field")
    texts: list[str] = []
    # Stop at num_samples usable rows: hub corpora (wikitext, ...) are large and full of blank rows.
    for row in rows:
        text = row[cal.text_field]
        if _usable(text, cal):
            texts.append(text)
            if len(texts) == cal.num_samples:
                break
    return texts
