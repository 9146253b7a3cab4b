"""What else was using the machine while a benchmark ran, and whether its figures are too noisy to trust.

Before and after each bench run: the 1/5/15-minute load averages (`os.getloadavg`), the CPU time
counters of /proc/stat (steal = time the hypervisor gave to other guests), and where `nvidia-smi`
exists, each GPU's utilisation and memory and the processes using it. After the run, the spread of
its repeats: the coefficient of variation (sample std / mean) of per-repeat output tokens/s.
A figure is flagged noisy, with one warning line, when
- the 1-minute load average before the run exceeds BACKGROUND_LOAD_PER_CPU per CPU (other jobs
  were running: the bench itself has not started yet),
- the steal share during the run exceeds MAX_STEAL, or
- any level's tokens/s CV exceeds MAX_CV (repeats disagree by more than 10 %).
Absolute tokens/s from a noisy run say little; ratios from a paired run still do (pipelines/ratios.py).
Exercised by `pytest tests/test_paired_bench.py -k conditions`.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipelines.ratios import coefficient_of_variation
from pipelines.records import BenchConditions, LoadLevel

log = logging.getLogger(__name__)

BACKGROUND_LOAD_PER_CPU = 0.5
MAX_STEAL = 0.05
MAX_CV = 0.10
# /proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq steal (guest counted in user).
_STEAL_FIELD = 7
NVIDIA_SMI_SECONDS = 10


@dataclass
class Snapshot:
    load_avg: tuple[float, float, float]
    # (steal, total) jiffies since boot; None where /proc/stat cannot be read (not Linux).
    cpu_times: tuple[int, int] | None
    gpus: list[str]


def snapshot() -> Snapshot:
    return Snapshot(load_avg=os.getloadavg(), cpu_times=_read_cpu_times(), gpus=gpu_status())


def cpu_times_from_stat(text: str) -> tuple[int, int]:
    """(steal, total) jiffies from the aggregate 'cpu' line of /proc/stat."""
    fields = [int(v) for v in text.splitlines()[0].split()[1:9]]
    return fields[_STEAL_FIELD], sum(fields)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_status() -> list[str]:
    """nvidia-smi's GPUs (name, utilisation, memory used) and compute processes; [] without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    queries = [["--query-gpu=name,utilization.gpu,memory.used,memory.total"],
               ["--query-compute-apps=pid,process_name,used_memory"]]
    lines = []
    for query in queries:
        try:
            done = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=NVIDIA_SMI_SECONDS, check=True)
        except (OSError, subprocess.SubprocessError):  # a broken driver must not fail the benchmark
            return lines
        lines += [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return lines


def conditions(before: Snapshot, after: Snapshot, levels: list[LoadLevel], cpus: int | None = None) -> BenchConditions:
    """The run's conditions from snapshots taken around it and its levels' per-repeat tokens/s."""
    cpus = cpus or os.cpu_count() or 1
    steal = _steal_fraction(before.cpu_times, after.cpu_times)
    spreads = {level.load or f"batch {level.batch_size}": cv for level in levels
               if (cv := coefficient_of_variation(level.repeat_output_tokens_per_s)) is not None}
    warnings = []
    if before.load_avg[0] > BACKGROUND_LOAD_PER_CPU * cpus:
        warnings.append(f"background load: load average {before.load_avg[0]:.2f} on {cpus} CPUs before the run")
    if steal is not None and steal > MAX_STEAL:
        warnings.append(f"CPU steal {steal:.0%} during the run")
    if spreads and max(spreads.values()) > MAX_CV:
        where = max(spreads, key=spreads.get)
        warnings.append(f"repeats spread: tokens/s CV {spreads[where]:.0%} at {where}")
    return BenchConditions(cpu_model=cpu_model(), cpus=cpus, load_avg_before=list(before.load_avg),
                           load_avg_after=list(after.load_avg), steal_fraction=steal,
                           gpus=[*before.gpus, *(f"after: {line}" for line in after.gpus)],
                           max_tokens_per_s_cv=max(spreads.values()) if spreads else None, warnings=warnings)


def warn_if_noisy(variant: str, found: BenchConditions) -> None:
    if found.warnings:
        log.warning("benchmark of %s is noisy (%s): compare variants by their paired ratios",
                    variant, "; ".join(found.warnings))


def _read_cpu_times() -> tuple[int, int] | None:
    try:
        return cpu_times_from_stat(Path("/proc/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _steal_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
