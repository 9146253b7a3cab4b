"""Time preflight's suite check (every task found, its YAML parsed, every item rendered) for a config.

    python benchmarks/suite_check.py eval=domain

Importing lm-eval is left out of the time (every version pays it); what is timed is building the
task index and loading and rendering the suites. Results: BENCHMARKS.md, "Preflight's suite check".
"""

from __future__ import annotations

import sys
import time

from pipelines.cli import compose_all


def main() -> None:
    cfg = compose_all(sys.argv[1:])[0]
    try:
        from pipelines.evaluate.suites import check_suites
    except ImportError:  # before issue 14, the check lived in preflight (and indexed every built-in task)
        from pipelines.preflight import check_suites
    import lm_eval.tasks  # noqa: F401

    start = time.perf_counter()
    check_suites(cfg.eval)
    print(f"check_suites({', '.join(sys.argv[1:]) or 'defaults'}): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
