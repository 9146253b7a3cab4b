"""The exit codes of `python -m pipelines.run`, and the only place that decides them.

    0    PROMOTE (or INCONCLUSIVE when gate.inconclusive_blocks=false); plan=true: every plan fits
    1    a verdict that blocks: REJECT, or INCONCLUSIVE when gate.inconclusive_blocks=true; never a crash
    2    invalid input or environment: one line saying what to fix; plan=true: a plan does not fit
    3    a stage or library failed: one line and the log holding the traceback
    130  interrupted by Ctrl-C; 143 by SIGTERM

Single runs, sweeps, plan=true and interrupts all ask here: a variant's code is computed once, by
`of_outcome`, written into its records (outcome.json, summary.json, MLflow) and returned by the
process; an exception that ends the command is mapped by `of_exception`. Tested by
tests/test_exit_codes.py, which walks every failure class.
"""

from __future__ import annotations

import signal

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from pipelines.config import GateConfig
from pipelines.errors import UserError
from pipelines.interrupts import Terminated
from pipelines.records import Outcome, Verdict

OK = 0
VERDICT_BLOCKS = 1
INVALID_INPUT = 2
STAGE_FAILED = 3
INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM

# Exceptions that mean the user's input or environment is wrong, whichever layer raised them:
# ours, and Hydra's / OmegaConf's own parse and composition errors ('eval.tasks=[a', a stray word).
INPUT_ERRORS: tuple[type[BaseException], ...] = (UserError, HydraException, OmegaConfBaseException)


def of_verdict(verdict: Verdict, policy: GateConfig) -> int:
    """0 PROMOTE, 1 REJECT; INCONCLUSIVE is 1 when policy.inconclusive_blocks, else 0."""
    if verdict.decision == "PROMOTE":
        return OK
    if verdict.decision == "INCONCLUSIVE" and not policy.inconclusive_blocks:
        return OK
    return VERDICT_BLOCKS


def of_outcome(outcome: Outcome, policy: GateConfig) -> int:
    """A variant's code: its verdict's, or 3 when a stage failed before the gate decided."""
    if outcome.error or outcome.verdict is None:
        return STAGE_FAILED
    return of_verdict(outcome.verdict, policy)


def of_exception(error: BaseException) -> int:
    """The code of an exception that ends a variant or the command."""
    if isinstance(error, Terminated):
        return TERMINATED
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(error, INPUT_ERRORS):
        return INVALID_INPUT
    return STAGE_FAILED


def of_command(outcomes: list[Outcome]) -> int:
    """The command's code: the worst of its variants' (a sweep with no outcome at all failed)."""
    return max((outcome.exit_code for outcome in outcomes), default=STAGE_FAILED)
