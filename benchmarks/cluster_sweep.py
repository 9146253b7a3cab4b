"""The four-variant sweep on the local SLURM cluster (2 jobs at once) against the same sweep run
serially in one process: wall time, base evaluations, exit code, machine load. BENCHMARKS.md,
"The sweep on SLURM with a PostgreSQL-backed MLflow server".

    deploy/local-cluster.sh up && source .cluster/env
    python benchmarks/cluster_sweep.py --tracking-uri http://127.0.0.1:<port> -- eval=domain bench=off
    python benchmarks/cluster_sweep.py --tracking-uri ... --order slurm,serial --out <json> -- eval=domain bench=off

Each sweep starts from an empty cache (its own folder), so both quantize and evaluate everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTS = "fp8,w8a8,gptq,canary-w2"
LAUNCHERS = {"serial": [], "slurm": ["hydra/launcher=slurm", "hydra.launcher.array_parallelism=2"]}


def run_sweep(name: str, work: Path, uri: str, extra: list[str]) -> dict:
    folder = work / name
    command = [sys.executable, "-m", "pipelines.run", "-m", f"quant={QUANTS}", "tracking=server",
               f"tracking.uri={uri}", f"cache_dir={folder / 'cache'}", f"hydra.sweep.dir={folder / 'multirun'}",
               f"sweep=bench-{name}-{int(time.time())}", *LAUNCHERS[name], *extra]
    load_before = os.getloadavg()
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder.parent)
    wall_s = time.monotonic() - started
    (folder / "stdout.log").write_text(result.stdout + result.stderr)
    return {"launcher": name, "wall_s": round(wall_s, 1), "exit_code": result.returncode,
            "base_evaluations": base_evaluations(folder / "cache"), "load_before": load_before,
            "load_after": os.getloadavg(), "command": " ".join(command[1:])}


def base_evaluations(cache: Path) -> int:
    """How many variants' records say their base evaluation was computed rather than read from the cache."""
    outcomes = cache.glob("sweeps/*/outcomes/*.json")
    return sum(not json.loads(path.read_text())["base_eval"]["from_cache"] for path in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="the MLflow server `deploy/local-cluster.sh up` printed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster_sweep.json"))
    parser.add_argument("--order", default="serial,slurm", help="which sweep runs first (load drifts between them)")
    parser.add_argument("extra", nargs="*", help="overrides for both sweeps, after --")
    args = parser.parse_args()
    if "SLURM_CONF" not in os.environ:
        parser.error("SLURM_CONF is not set: source .cluster/env after deploy/local-cluster.sh up")
    work = Path(tempfile.mkdtemp(prefix="quantgate-cluster-sweep-"))
    rows = [run_sweep(name, work, args.tracking_uri, args.extra) for name in args.order.split(",")]
    record = {"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": rows,
              "work_dir": str(work)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for row in rows:
        print(f"{row['launcher']:7s} {row['wall_s']:7.1f} s  exit {row['exit_code']}  base evaluations "
              f"{row['base_evaluations']}  load {row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f}")


if __name__ == "__main__":
    main()
