"""The embedded default model and its data, shipped inside the package so everything runs offline.

`EMBEDDED_MODEL_DIR` is a tiny Llama trained by `python -m pipelines.embedded.train` on text from
`python -m pipelines.embedded.data`; `CALIBRATION_TEXT` feeds quantizers, `REFERENCE_TEXT`
(held-out domain text) feeds the KL-divergence measurement. The bundled lm-eval suites are the
`evalsuites` package. Each is what the config value `embedded` means in its setting
(`model.source`, `quant.calibration.source`, `eval.reference_text`, `eval.include_path`): that
value is interpreted here and nowhere else (`is_embedded`, `resolve_source`).
"""
from pathlib import Path

from evalsuites import SUITES_DIR

PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_MODEL_DIR = PACKAGE_DIR / "tiny-llama"
CALIBRATION_TEXT = PACKAGE_DIR / "data" / "calibration.txt"
REFERENCE_TEXT = PACKAGE_DIR / "data" / "reference.txt"
# The config value naming the bundled asset of a setting.
EMBEDDED = "embedded"


def is_embedded(setting: str | None) -> bool:
    return setting == EMBEDDED


def resolve_source(setting: str, kind: str) -> Path:
    """The path a setting names: the bundled `kind` (model, calibration, reference, suites) for
    `embedded`, else the user's path with `~` expanded. Whether it exists is the caller's check."""
    if not is_embedded(setting):
        return Path(setting).expanduser()
    if kind == "suites":
        return SUITES_DIR
    return {"model": EMBEDDED_MODEL_DIR, "calibration": CALIBRATION_TEXT, "reference": REFERENCE_TEXT}[kind]
