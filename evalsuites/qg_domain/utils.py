"""Data loading for the qg_domain lm-eval suites (referenced as `!function utils.load_split`).

lm-eval resolves `dataset_kwargs.data_files` against the current working directory, so the
tasks instead pass a file name and this loader resolves it next to this file. Exercised by:

    lm_eval --model hf --model_args pretrained=<model> --include_path evalsuites --tasks qg_domain
"""
import json
from pathlib import Path

import datasets

DATA_DIR = Path(__file__).resolve().parent / "data"


def load_split(data_file: str, **_task_metadata) -> datasets.DatasetDict:
    """Read `data/<data_file>` (jsonl) as the test split; lm-eval also passes task metadata, unused here."""
    lines = (DATA_DIR / data_file).read_text().splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(line) for line in lines])})
