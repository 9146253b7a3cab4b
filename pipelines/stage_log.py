"""The guard `run_variant` wraps each stage in: its StageTime, which stage failed, what it produced.

    run = StageLog()
    with run.stage("quantize", cached=("variant",)):
        variant = run.keep(variant=run_quantize(...))
    Outcome(..., **run.results, stages=run.times)

A stage's results are kept as they are produced, so a later stage's failure loses none of them;
the stage is "reused" when every result named in `cached` came from the cache. Exercised by
`python -m pipelines.run` and tests/test_stage_log.py.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from pipelines import interrupts
from pipelines.logs import adopt_library_logs
from pipelines.records import StageTime

log = logging.getLogger(__name__)


class StageLog:
    def __init__(self) -> None:
        self.times: list[StageTime] = []
        self.results: dict[str, Any] = {}
        # The stage an exception left: what the Outcome's error names.
        self.failed: str | None = None

    @contextlib.contextmanager
    def stage(self, name: str, cached: tuple[str, ...] = (), timed: bool = True) -> Iterator[None]:
        interrupts.entering(name)
        adopt_library_logs()  # libraries imported by the stage before keep their chatter in run.log
        started = time.time()
        try:
            yield
        except BaseException:
            self.failed = name
            raise
        finally:  # a failed stage's time belongs to the run too
            if timed:
                self.times.append(StageTime(name, started, time.time(), self._reused(cached)))
        if timed:
            log.info("%s done in %.1f s", name, self.times[-1].ended - started)

    def keep(self, **results: Any) -> Any:
        """Record stage results under their Outcome field names; returns the value when given one."""
        self.results.update(results)
        return next(iter(results.values())) if len(results) == 1 else None

    def _reused(self, cached: tuple[str, ...]) -> bool:
        records = [self.results.get(name) for name in cached]
        return bool(records) and all(record is not None and record.from_cache for record in records)
