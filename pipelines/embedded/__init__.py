"""The embedded default model and its data, shipped inside the package so everything runs offline.

`EMBEDDED_MODEL_DIR` is a tiny Llama trained by `python -m pipelines.embedded.train` on text from
`python -m pipelines.embedded.data`; `CALIBRATION_TEXT` feeds quantizers, `REFERENCE_TEXT`
(held-out domain text) feeds the KL-divergence measurement.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_MODEL_DIR = PACKAGE_DIR / "tiny-llama"
CALIBRATION_TEXT = PACKAGE_DIR / "data" / "calibration.txt"
REFERENCE_TEXT = PACKAGE_DIR / "data" / "reference.txt"
