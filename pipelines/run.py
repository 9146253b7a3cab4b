"""quantgate's command line: can this variant replace the base model?

    python -m pipelines.run                                  # embedded model, its FP8 variant
    python -m pipelines.run model=llama3-70b quant=awq       # one variant
    python -m pipelines.run -m quant=fp8,w8a8,awq,gptq       # a sweep: one MLflow parent run
    python -m pipelines.run model=llama3-70b quant=awq plan=true   # sizes, GPUs, disk, time, cost; runs nothing

Exit codes (pipelines/exit_codes.py): 0 PROMOTE, 1 REJECT or blocking INCONCLUSIVE, 2 invalid input
or configuration, 3 a stage failed (a bug or a library failure: see the log and the FAILED MLflow
run), 130 / 143 interrupted by Ctrl-C / SIGTERM (one line; run the same command to resume).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipelines import interrupts, logs, pipeline, sweep
from pipelines.cli import (compose_command, expand_yaml_choices, is_inspection, log_traceback, report_failure,
                           run_composed, to_run_config)
from pipelines.config import RunConfig, register_schemas
from pipelines.errors import failure_line
from pipelines.storage import check_creatable

register_schemas()
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://pipelines.conf", config_name="config")
def job(cfg: DictConfig) -> None:
    """One Hydra job of a sweep (or an inspection such as --cfg): its launcher composed `cfg`, in this
    process or in another one, from overrides the CLI has already composed, validated and preflighted."""
    run_job(to_run_config(cfg))


def run_job(run_cfg: RunConfig) -> None:
    """One variant against its base; preflight ran for every config of the command before any job."""
    logs.replay_early_records()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        outcome = pipeline.run_variant(run_cfg, output_dir, sweep.parent_run_id(), preflighted=True)
    except Exception as error:
        if not sweep.active():
            raise  # main() prints its one line and exits with its code
        # A sweep goes on with the next variant; this one's outcome carries its code (2 for bad input).
        log.error("variant %s: %s; traceback in %s", run_cfg.quant.name, failure_line(error), log_traceback(error))
        outcome = pipeline.failed_outcome(run_cfg, error, output_dir)
    sweep.record(outcome)


def main() -> None:
    argv = sys.argv[1:] = expand_yaml_choices(sys.argv[1:])  # Hydra's own jobs read sys.argv too
    if is_inspection(argv):
        job()
        return
    with logs.redacted_console():
        code = _main(argv)
    sys.exit(code)


def _main(argv: list[str]) -> int:
    logs.show_tracebacks("debug=true" in argv)
    logs.capture_early()
    interrupts.install()
    try:
        return _run(argv)
    except BaseException as error:  # every way a command ends without a verdict: one line, one exit code
        return report_failure(error, debug="debug=true" in argv)


def _run(argv: list[str]) -> int:
    interrupts.entering("preflight")
    configs, single_run = compose_command(argv)  # each config composed once, here
    if configs[0].plan:  # plan=true: print what the run would need, then stop before any work
        from pipelines.plan_report import print_plans  # scipy: only for plan=true

        return print_plans(configs)
    # The command's folder can be made: checked before the slower checks, creating nothing.
    if single_run is not None:
        check_creatable(Path(single_run.hydra.run.dir), "hydra.run.dir")
    else:  # Hydra's default sweep folder is under ./multirun; its dated parts do not exist yet either way
        given = [arg.split("=", 1)[1] for arg in argv if arg.startswith("hydra.sweep.dir=")]
        check_creatable(Path(given[-1] if given else "multirun"), "hydra.sweep.dir")
    sweep.preflight_all(configs)
    if single_run is not None:
        run_composed(lambda _: run_job(configs[0]), single_run)
    else:
        sweep.start(configs)
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises the launcher's error instead of exiting 1
        try:
            job()  # Hydra's launcher runs the jobs
        except Exception as error:  # the launcher gave up, e.g. a SLURM job left no result: the sweep still
            log.warning("the launcher stopped: %s", failure_line(error))  # reports, such a variant FAILED (3)
    interrupts.entering("report")
    return sweep.finish(configs)


if __name__ == "__main__":
    main()
