"""Wall time of the evaluate stage vs a plain `lm_eval` CLI run on the same model, tasks and settings.

Each measurement is a fresh process (imports included, as a user pays them) with an empty cache:
  plain:      lm_eval run --model hf --include_path evalsuites --tasks qg_domain --log_samples ...
  stage:      run_evaluate(cfg, base) with the reference-text pass (what `python -m pipelines.run` does)
  stage-noref the same with eval.reference_text=null (the lm-eval work alone)
Run: nice -n 10 python benchmarks/eval_overhead.py [--repeats N] [HYDRA_OVERRIDES ...]   (default: eval=domain)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipelines.config import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose("config", overrides=overrides))


def run_stage(overrides: list[str]) -> None:
    """Child process: evaluate the configured base model once through the evaluate stage."""
    from pipelines.evaluate import run_evaluate
    from pipelines.models import resolve_base
    from pipelines.records import Variant

    cfg = compose(overrides)
    base = resolve_base(cfg.model)
    variant = Variant(name=cfg.model.name, base=cfg.model.name, backend="none", method="none", scheme=None,
                      checkpoint_dir=str(base.path), size_bytes=0, content_hash=base.fingerprint,
                      cache_key=base.fingerprint, quantize_seconds=0.0, from_cache=False)
    result = run_evaluate(cfg, variant)
    print(f"stage seconds (after imports): {result.seconds:.1f}")


def plain_command(overrides: list[str], output: Path) -> list[str]:
    """The stock CLI with the model, tasks, batch size, device, seed and limit the config gives the stage."""
    from pipelines.evaluate.suites import resolve_include_path
    from pipelines.models import resolve_base

    cfg = compose(overrides)
    model_args = f"pretrained={resolve_base(cfg.model).path},dtype={cfg.model.dtype}"
    command = [str(Path(sys.executable).with_name("lm_eval")), "run", "--model", "hf", "--model_args", model_args,
               "--include_path", str(resolve_include_path(cfg.eval.include_path)),
               "--tasks", ",".join(cfg.eval.tasks), "--device", cfg.hardware.device,
               "--batch_size", str(cfg.eval.batch_size), "--seed", str(cfg.eval.seed),
               "--log_samples", "--output_path", str(output)]
    return command + (["--limit", str(cfg.eval.limit)] if cfg.eval.limit else [])


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    stage_line = [line for line in done.stdout.splitlines() if line.startswith("stage seconds")]
    print(f"  {seconds:7.1f} s  {' '.join(command[:3])} ... {stage_line[0] if stage_line else ''}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--stage", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. eval=quick model.source=/path")
    args = parser.parse_args()
    if args.stage:
        return run_stage(args.overrides)
    times: dict[str, list[float]] = {"plain": [], "stage": [], "stage-noref": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            cache = Path(scratch) / f"cache{repeat}"
            stage = [sys.executable, __file__, "--stage", "--", *args.overrides]
            print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
            times["plain"].append(timed(plain_command(args.overrides, Path(scratch) / f"plain{repeat}")))
            times["stage"].append(timed([*stage, f"cache_dir={cache}"]))
            times["stage-noref"].append(timed([*stage, f"cache_dir={cache}-noref", "eval.reference_text=null"]))
    best = {name: min(values) for name, values in times.items()}
    for name in ("stage", "stage-noref"):
        ratio = best[name] / best["plain"]
        print(f"{name:12s} {best[name]:7.1f} s  vs plain {best['plain']:7.1f} s  ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
