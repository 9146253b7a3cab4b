"""The command line's front door: every config a command would run is composed and validated
before Hydra starts a job, so a bad name or value costs milliseconds, not a quantization.

`python -m pipelines.run quant=nonsense` -> one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import itertools
import logging
import sys
from typing import Iterator

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipelines.config import GROUPS, RunConfig, register_schemas
from pipelines.errors import ConfigError, UserError
from pipelines.registry import did_you_mean

CONFIG_MODULE = "pipelines.conf"
# Hydra flags that only print or inspect; they must stay instant and touch nothing.
INSPECT_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--version"}
MULTIRUN_FLAGS = {"-m", "--multirun"}


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Convert once to the typed schema, so every `__post_init__` check runs."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(_first_line(error)) from error


def is_multirun(argv: list[str]) -> bool:
    return bool(MULTIRUN_FLAGS & set(argv)) or "hydra.mode=MULTIRUN" in argv


def is_inspection(argv: list[str]) -> bool:
    return bool(INSPECT_FLAGS & set(argv))


def compose_all(argv: list[str]) -> list[RunConfig]:
    """Every config the command would run (one per sweep combination), validated."""
    overrides = [arg for arg in argv if not arg.startswith("-") and "=" in arg]
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        _check_group_choices(overrides)
        return [_compose(combination) for combination in _expand_sweeps(overrides)]


def _expand_sweeps(overrides: list[str]) -> Iterator[list[str]]:
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra")])
    choices = []
    for override in parsed:
        key = override.get_key_element()
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.get_value_element_as_str()]
        choices.append([f"{key}={value}" for value in values])
    return (list(combination) for combination in itertools.product(*choices))


def _check_group_choices(overrides: list[str]) -> None:
    loader = GlobalHydra.instance().config_loader()
    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        if group not in GROUPS or override.is_delete():
            continue
        valid = [name for name in loader.get_group_options(group) if not name.endswith("_schema")]
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value not in valid:
                raise ConfigError(did_you_mean(group, value, valid))


def _compose(overrides: list[str]) -> RunConfig:
    try:
        cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_first_line(error)) from error
    return to_run_config(cfg)


def _first_line(error: BaseException) -> str:
    """Hydra wraps the useful reason (e.g. "Key 'bogus' not in 'QuantConfig'") as the cause."""
    lines = []
    while error is not None:
        text = str(error).strip()
        lines.append(next((part for part in text.splitlines() if part.strip()), type(error).__name__))
        error = error.__cause__
    return ": ".join(line.rstrip(".").replace("\t", " ") for line in lines)


def fail(error: UserError, debug: bool = False) -> None:
    """Print the one-line message and exit 2; `debug` (or hydra.verbose) keeps the traceback."""
    if debug:
        logging.getLogger("pipelines").exception("invalid input")
    print(f"quantgate: error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
