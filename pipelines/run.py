"""quantgate's command line: can this variant replace the base model?

    python -m pipelines.run                                  # embedded model, its FP8 variant
    python -m pipelines.run model=llama3-70b quant=awq       # one variant
    python -m pipelines.run -m quant=fp8,w8a8,awq,gptq       # a sweep: one MLflow parent run
    python -m pipelines.run model=llama3-70b quant=awq plan=true   # sizes, GPUs, disk, time, cost; runs nothing

Exit codes: 0 PROMOTE, 1 REJECT or blocking INCONCLUSIVE, 2 invalid input or configuration,
3 a stage failed (a bug or a library failure: see the log and the FAILED MLflow run),
130 / 143 interrupted by Ctrl-C / SIGTERM (one line; run the same command to resume).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipelines import interrupts, logs, sweep
from pipelines.cli import compose_command, fail, is_inspection, run_composed, to_run_config
from pipelines.config import RunConfig, register_schemas
from pipelines.errors import UserError

register_schemas()


@hydra.main(version_base="1.3", config_path="pkg://pipelines.conf", config_name="config")
def job(cfg: DictConfig) -> None:
    """One Hydra job of a sweep (or an inspection such as --cfg): its launcher composed `cfg`, in this
    process or in another one, from overrides the CLI has already composed, validated and preflighted."""
    run_job(to_run_config(cfg))


def run_job(run_cfg: RunConfig) -> None:
    """One variant against its base; preflight ran for every config of the command before any job."""
    from hydra.core.hydra_config import HydraConfig

    from pipelines.pipeline import run_variant

    logs.replay_early_records()
    try:
        outcome = run_variant(run_cfg, Path(HydraConfig.get().runtime.output_dir), sweep.parent_run_id(),
                              preflighted=True)
    except UserError as error:
        if not sweep.active():
            fail(error, run_cfg.debug)
        outcome = sweep.failed_outcome(run_cfg, error)
    sweep.record(outcome, run_cfg)


def main() -> None:
    argv = sys.argv[1:]
    if is_inspection(argv):
        job()
        return
    logs.capture_early()
    interrupts.install()
    try:
        sys.exit(_run(argv))
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM through interrupts.install
        interrupts.exit_interrupted(interrupt, debug="debug=true" in argv)


def _run(argv: list[str]) -> int:
    try:
        interrupts.entering("preflight")
        configs, single_run = compose_command(argv)  # each config composed once, here
        if configs[0].plan:  # plan=true: print what the run would need, then stop before any work
            from pipelines.plan_report import print_plans

            sys.exit(print_plans(configs))
        sweep.preflight_all(configs)
    except UserError as error:
        fail(error, "debug=true" in argv)
    if single_run is not None:
        run_composed(lambda _: run_job(configs[0]), single_run)
    else:
        sweep.start(configs)
        try:
            job()  # Hydra's launcher runs the jobs
        except SystemExit:  # the launcher gave up (Hydra printed why), e.g. a SLURM job left no result
            pass  # the sweep still reports: such a variant is FAILED (exit 3), the others as they ended
    interrupts.entering("report")
    return sweep.finish(configs)


if __name__ == "__main__":
    main()
