"""Where outcomes go after the gate: the `Tracker` seam and the factory that picks a backend.

`python -m pipelines.run tracking=local` logs to MLflow (pipelines/track/mlflow_tracker.py);
`tracking=off` logs nothing. Metric and tag names are in pipelines/track/keys.py.

A sweep is one parent run, created once (by the lead process, e.g. a Hydra callback) with
`start_sweep`; every job, in whatever process, logs its variant as a child with `log_outcome(...,
parent_run_id=...)`. A failed variant is an `Outcome` with `error` set: it becomes a FAILED run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pipelines.config import TrackingConfig
from pipelines.records import Outcome
from pipelines.registry import TRACKERS, resolve


class Tracker(Protocol):
    def start_sweep(self, name: str, config: dict[str, Any]) -> str:
        """Create the sweep's parent run and return its id (pass it to every job)."""

    def log_outcome(self, outcome: Outcome, config: dict[str, Any], parent_run_id: str | None = None,
                    reference: bool = False) -> str:
        """Log one variant (or the base, `reference=True`) as a run; return its run id."""

    def log_sweep_report(self, parent_run_id: str, files: list[Path], outcomes: list[Outcome] | None = None) -> None:
        """Attach the sweep report (plot, tables; a summary table of `outcomes`) to the parent run and close it."""


def make_tracker(tracking: TrackingConfig) -> Tracker | None:
    """The configured tracker, or None when tracking is off."""
    if not tracking.enabled:
        return None
    return resolve(TRACKERS, "tracker", tracking.backend)(tracking)


def check_reachable(tracking: TrackingConfig) -> None:
    """Fail fast (InputError) before any quantization when the tracking store cannot be used."""
    if tracking.enabled:
        resolve(TRACKERS, "tracker", tracking.backend).check_reachable(tracking)
