"""Calibration texts for data-driven quantization (GPTQ, AWQ, SmoothQuant), from config.

`quant.calibration.source` is "embedded" (the shipped domain text), a local .txt (paragraphs
separated by blank lines) or .jsonl (one object per line, text in `text_field`), or
"hf:<dataset>[:<config>]" (needs hub access). Exercised by `python -m pipelines.run quant=gptq`.
An empty set is refused here: llm-compressor would otherwise fail deep inside with
"num_samples should be a positive integer value".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipelines.config import CalibrationConfig
from pipelines.errors import InputError

log = logging.getLogger(__name__)

HUB_PREFIX = "hf:"
FIX = "set quant.calibration.source=embedded or to a .txt (blank-line separated) / .jsonl file"


def load_calibration(cal: CalibrationConfig) -> list[str]:
    """The first `cal.num_samples` non-empty texts of the configured source."""
    if cal.source.startswith(HUB_PREFIX):
        texts, where = _hub_texts(cal), cal.source
    else:
        path = _local_path(cal.source)
        texts, where = _file_texts(path, cal.text_field), str(path)
    texts = [text for text in (t.strip() for t in texts) if text][: cal.num_samples]
    if not texts:
        raise InputError(f"calibration source {where} has no usable texts; {FIX}")
    log.info("calibration: %d texts from %s", len(texts), where)
    return texts


def _local_path(source: str) -> Path:
    if source == "embedded":
        from pipelines.embedded import CALIBRATION_TEXT

        path = CALIBRATION_TEXT
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist; {FIX}")
    if path.suffix not in {".txt", ".jsonl"}:
        raise InputError(f"calibration file {path} is neither .txt nor .jsonl; {FIX}")
    return path


def _file_texts(path: Path, text_field: str) -> list[str]:
    content = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return content.split("\n\n")
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number} is not valid JSON ({error.msg}); fix or remove that line") from error
        if isinstance(row, dict) and isinstance(row.get(text_field), str):
            texts.append(row[text_field])
    if content.strip() and not texts:
        raise InputError(f"{path} has no rows with a string field '{text_field}'; "
                         "set quant.calibration.text_field to the field holding the text")
    return texts


def _hub_texts(cal: CalibrationConfig) -> list[str]:
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
        if isinstance(text, str) and text.strip():
            texts.append(text)
            if len(texts) == cal.num_samples:
                break
    return texts
