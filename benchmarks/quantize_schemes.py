"""Quantization time per scheme: the numbers in BENCHMARKS.md, "Quantization time per scheme".

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/quantize_schemes.py
    python benchmarks/quantize_schemes.py --quant fp8 gptq -- model.source=/path/to/model

Each scheme is quantized with the composed config into a fresh cache directory (no cache hits),
so a row is the full `run_quantize` wall time: load, calibrate, compress, save, hash. The
llm-compressor import is timed once, separately. Without the embedded model (still being
trained), a random model with the embedded shapes stands in, and the output says so.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from pipelines.embedded import CALIBRATION_TEXT, EMBEDDED_MODEL_DIR
from pipelines.models import offline_environment, resolve_base
from pipelines.pipeline import compose_config
from pipelines.quantize import run_quantize

log = logging.getLogger("quantize_schemes")
SCHEMES = ["fp8", "w8a8", "awq", "gptq", "canary-w2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", nargs="+", default=SCHEMES, help="conf/quant names to time")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. quant.calibration.num_samples=32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="quantize-schemes-") as scratch:
        notes = [import_note()]
        substitutes, notes = stand_ins(Path(scratch), notes)
        rows = time_schemes(args.quant, [f"cache_dir={scratch}/cache", *substitutes, *args.overrides])
    print("\n".join(notes + [""] + table(rows)))


def stand_ins(scratch: Path, notes: list[str]) -> tuple[list[str], list[str]]:
    """Overrides pointing at a random embedded-shaped model / generated text when those are absent."""
    overrides, notes = [], list(notes)
    if not (EMBEDDED_MODEL_DIR / "model.safetensors").is_file():
        notes.append(f"embedded model missing at {EMBEDDED_MODEL_DIR}: timed a RANDOM model with its shapes")
        overrides.append(f"model.source={random_embedded_shaped_model(scratch / 'random-tiny-llama')}")
    if not CALIBRATION_TEXT.is_file():
        notes.append(f"embedded calibration text missing at {CALIBRATION_TEXT}: used generated domain records")
        from pipelines.embedded.data import build_world, training_records

        path = scratch / "calibration.txt"
        path.write_text("\n\n".join(training_records(build_world(), 512)) + "\n")
        overrides.append(f"quant.calibration.source={path}")
    for note in notes[1:]:
        log.warning(note)
    return overrides, notes


def random_embedded_shaped_model(out: Path) -> Path:
    from pipelines.embedded.data import build_world, training_records
    from pipelines.embedded.train import TinyArchitecture, build_model, train_tokenizer

    architecture = TinyArchitecture()
    tokenizer = train_tokenizer(training_records(build_world(), 2000), architecture.vocab)
    build_model(architecture, tokenizer).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def import_note() -> str:
    """Import llm-compressor (and with it torch, transformers) before timing, so no row pays for it."""
    started = time.perf_counter()
    import llmcompressor  # noqa: F401

    return f"llm-compressor import (once per process, not in the rows): {time.perf_counter() - started:.1f} s"


def time_schemes(schemes: list[str], overrides: list[str]) -> list[dict]:
    rows = []
    for scheme in schemes:
        cfg = compose_config([f"quant={scheme}", *overrides])
        offline_environment(cfg.model)
        base = resolve_base(cfg.model)
        started = time.perf_counter()
        variant = run_quantize(cfg.quant, base, Path(cfg.cache_dir), cfg.seed, overwrite=cfg.overwrite)
        rows.append({"scheme": scheme, "seconds": time.perf_counter() - started, "bytes": weight_bytes(
            Path(variant.checkpoint_dir)), "base_bytes": weight_bytes(base.path), "base": str(base.path)})
    return rows


def weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def table(rows: list[dict]) -> list[str]:
    lines = [f"base: {rows[0]['base']} ({rows[0]['base_bytes'] / 1e6:.2f} MB of weights)", "",
             "| scheme | seconds | size MB | compression vs base |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['scheme']} | {row['seconds']:.1f} | {row['bytes'] / 1e6:.2f} "
                     f"| {row['base_bytes'] / row['bytes']:.2f}x |")
    return lines


if __name__ == "__main__":
    main()
