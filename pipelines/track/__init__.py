"""Where outcomes go after the gate: the `Tracker` seam and the factory that picks a backend.

`python -m pipelines.run tracking=local` logs to MLflow (pipelines/track/mlflow_tracker.py);
`tracking=off` logs nothing. Metric and tag names are in pipelines/track/keys.py.

Adding a tracker is one module implementing `Tracker`, one conf/tracking/<name>.yaml setting
`backend: <name>` and one line in registry.TRACKERS (tests/test_seams.py does exactly that).

A sweep is one parent run, created once (by the lead process, pipelines/sweep.py) with
`start_sweep`; every job, in whatever process, logs its variant as a child with `log_outcome(...,
parent_run_id=...)`. A failed variant is an `Outcome` with `error` set: it becomes a FAILED run.
After every job, the lead process asks `alias_holder`, chooses the champion (pipelines/champion.py)
and calls `crown`: the alias moves once per command, whatever order the jobs finished in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from omegaconf import OmegaConf

from pipelines.config import RunConfig, TrackingConfig
from pipelines.errors import ConfigError
from pipelines.records import ChampionDecision, Contender, Outcome
from pipelines.redact import redact_config
from pipelines.registry import TRACKERS, resolve


class Tracker(Protocol):
    """A tracking backend (registry.TRACKERS, conf/tracking/*.yaml, picked by `tracking.backend`)."""

    # Its own libraries, whose versions it tags every run with (the records tag what the stages used).
    libraries: ClassVar[tuple[str, ...]]
    # Its own fields: a TrackingConfig subclass, registered as tracking/<backend>_schema, its YAMLs name.
    config_schema: ClassVar[type[TrackingConfig]]

    def __init__(self, tracking: TrackingConfig) -> None: ...

    @staticmethod
    def check(tracking: TrackingConfig) -> None:
        """Preflight, no network: raise a UserError for a tracking config this backend cannot use."""

    @staticmethod
    def check_reachable(tracking: TrackingConfig) -> None:
        """Preflight: raise an InputError within seconds when the store cannot be reached or written."""

    def start_sweep(self, name: str, config: dict[str, Any]) -> str:
        """Create the sweep's parent run and return its id (pass it to every job)."""

    def log_outcome(self, outcome: Outcome, config: dict[str, Any], parent_run_id: str | None = None,
                    reference: bool = False, register: bool = True) -> str:
        """Log one variant (or the base, `reference=True`) as a run; return its run id. `register=False`:
        a PROMOTE registers no model version (a recipe search's trial on its search split)."""

    def log_sweep_report(self, parent_run_id: str, files: list[Path], outcomes: list[Outcome] | None = None,
                         champions: list[ChampionDecision] | None = None) -> None:
        """Attach the sweep report (HTML page, plot, tables; a summary table of `outcomes`; the champion per
        model) to the parent run and close it."""

    def log_run_report(self, run_id: str, files: list[Path]) -> None:
        """Attach a single run's report (HTML page, tables) to that variant's run."""

    def alias_holder(self, model: str) -> Contender | None:
        """The registry alias's current holder for `model`, with what the champion policies rank by (None: none)."""

    def crown(self, decision: ChampionDecision) -> str | None:
        """Move the registry alias once, to the decision's champion (nothing when it is kept or absent)."""


def make_tracker(tracking: TrackingConfig) -> Tracker | None:
    """The configured tracker, or None when tracking is off."""
    if not tracking.enabled:
        return None
    return resolve(TRACKERS, "tracker", tracking.backend)(tracking)


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """The run's full config with secrets redacted: what is logged and written next to results."""
    return redact_config(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


def check_reachable(tracking: TrackingConfig) -> None:
    """Fail fast (a UserError) before any quantization when the tracking store cannot be used."""
    if tracking.enabled:
        tracker_class = resolve(TRACKERS, "tracker", tracking.backend)
        if type(tracking) is not tracker_class.config_schema:
            raise ConfigError(f"tracking.backend={tracking.backend} does not take tracking={tracking.name}'s fields "
                              f"({type(tracking).__name__}): choose a tracking config of that backend instead")
        tracker_class.check(tracking)
        tracker_class.check_reachable(tracking)
