"""Bundled lm-evaluation-harness domain suites (task prefix `qg_`), installed next to `pipelines`.

Load with: lm_eval.tasks.TaskManager(include_path=str(SUITES_DIR)); run with
lm_eval --model hf --model_args pretrained=<model> --include_path <SUITES_DIR> --tasks qg_domain
"""
from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent
