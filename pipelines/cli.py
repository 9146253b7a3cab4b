"""The command line's front door: every config a command would run is composed and validated
before Hydra starts a job, so a bad name or value costs milliseconds, not a quantization.

`python -m pipelines.run quant=nonsense` -> one line on stderr, exit code 2, no traceback; every other
failure too ends in one line and its code (`report_failure`, pipelines/exit_codes.py).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import os
import re
import sys
import tempfile
import traceback
import typing
from pathlib import Path
from typing import Callable, Iterator

from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import configure_log, run_job
from hydra.errors import HydraException, OverrideParseException
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from pipelines import exit_codes, interrupts
from pipelines.config import BACKEND_GROUPS, GROUPS, RunConfig, backend_schemas, register_schemas
from pipelines.errors import ConfigError, UserError, failure_line, first_line
from pipelines.redact import redact, remember_config_secrets
from pipelines.registry import did_you_mean

CONFIG_MODULE = "pipelines.conf"
# Hydra flags that only print or inspect; they must stay instant and touch nothing.
INSPECT_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--version"}
MULTIRUN_FLAGS = {"-m", "--multirun"}
# The config loader of the last `compose_command`: `run_composed` hands it to Hydra's job runner.
_loader = None


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Convert once to the typed schema, so every `__post_init__` check runs."""
    try:
        run_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(redact(first_line(error))) from error
    remember_config_secrets(dataclasses.asdict(run_cfg))  # hidden from every later log line and message
    return run_cfg


def is_multirun(argv: list[str]) -> bool:
    return bool(MULTIRUN_FLAGS & set(argv)) or "hydra.mode=MULTIRUN" in argv


def is_inspection(argv: list[str]) -> bool:
    return bool(INSPECT_FLAGS & set(argv))


def compose_all(argv: list[str]) -> list[RunConfig]:
    """Every config the command would run (one per sweep combination), validated."""
    return compose_command(argv)[0]


def compose_command(argv: list[str]) -> tuple[list[RunConfig], DictConfig | None]:
    """Every config the command would run, validated, each composed once; for a single run also its
    full config (Hydra's node included) for `run_composed`, so that the job does not compose it again.

    Searches the same config folders Hydra's own run will: the package's, `--config-dir` and
    `hydra.searchpath=[...]`, so a user's eval suite or gate policy kept outside the repo works.
    """
    args = get_args_parser().parse_args(expand_yaml_choices(argv))
    overrides = list(args.overrides)
    searchpath = [o for o in overrides if o.lstrip("+").startswith("hydra.searchpath=")]
    register_schemas()
    GlobalHydra.instance().clear()
    _initialize(args.config_dir)
    try:
        _check_unknown_keys(overrides)
        _check_group_choices(overrides, searchpath)
        if not is_multirun(argv):  # every override, Hydra's own included: what Hydra's run would compose
            full = _compose(overrides, from_shell=True)
            return [to_run_config(_without_hydra(full))], full
        return [to_run_config(_without_hydra(_compose(combination + searchpath)))
                for combination in _expand_sweeps(overrides)], None
    finally:
        GlobalHydra.instance().clear()


def expand_yaml_choices(argv: list[str]) -> list[str]:
    """`quant=path/to/conf/quant/x.yaml` (an existing file, e.g. the recipe a search wrote) becomes
    `quant=x` with the file's group folder's parent (path/to/conf) on hydra.searchpath."""
    folders, expanded = [], []
    for arg in argv:
        group, _, value = arg.partition("=")
        path = Path(value)
        if group in GROUPS and value.endswith(".yaml") and path.is_file():
            if path.parent.name != group:
                raise ConfigError(f"{group}={value}: keep the file in a folder named {group}/ (its parent "
                                  "folder goes on hydra.searchpath), e.g. my_conf/quant/x.yaml")
            folders.append(f"file://{path.parent.parent.resolve()}")
            arg = f"{group}={path.stem}"
        expanded.append(arg)
    if not folders:
        return argv
    given = [arg for arg in expanded if arg.lstrip("+").startswith("hydra.searchpath=")]
    listed = [p.strip() for arg in given for p in arg.split("=", 1)[1].strip("[]").split(",") if p.strip()]
    kept = [arg for arg in expanded if arg not in given]
    at = next(i for i, arg in enumerate(kept) if arg not in argv) + 1  # after the first rewritten choice,
    return [*kept[:at], f"hydra.searchpath=[{','.join(listed + folders)}]", *kept[at:]]  # before any flag


def run_composed(task: Callable[[DictConfig], None], cfg: DictConfig) -> None:
    """What `@hydra.main` does for a single run once it has composed `cfg` (Hydra.run): its output
    directory, its logging and `HydraConfig`, then `task`; without composing the config again."""
    with open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name="config")
    context = HydraContext(config_loader=_loader, callbacks=callbacks)
    result = run_job(hydra_context=context, task_function=task, config=cfg, job_dir_key="hydra.run.dir",
                     job_subdir_key=None, configure_logging=True)
    callbacks.on_run_end(config=cfg, config_name="config", job_return=result)
    _ = result.return_value  # re-raises what the task raised, as Hydra.run does


def _without_hydra(cfg: DictConfig) -> DictConfig:
    if "hydra" not in cfg:
        return cfg
    task_cfg = copy.deepcopy(cfg)
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _initialize(config_dir: str | None) -> None:
    """What `@hydra.main` sets up: the package's configs, with a `--config-dir` folder searched first."""
    search_path = create_config_search_path(f"pkg://{CONFIG_MODULE}")
    if config_dir is not None:
        if not os.path.isdir(config_dir):
            raise ConfigError(f"--config-dir {config_dir} is not a directory; give the folder holding your "
                              "config groups (e.g. eval/, gate/)")
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)
    global _loader
    _loader = GlobalHydra.instance().config_loader()


def _check_unknown_keys(overrides: list[str]) -> None:
    """`+key=` and `++key=` may add keys the typed schema lacks, which nothing would read: refuse them."""
    fields, open_dicts = _schema_keys(RunConfig)
    for group in BACKEND_GROUPS:  # a backend's own fields, e.g. serve.env (vLLM) takes +serve.env.NAME=
        for schema in backend_schemas(group).values():
            backend_fields, backend_dicts = _schema_keys(schema, f"{group}.")
            fields += backend_fields
            open_dicts += backend_dicts
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not (override.is_add() or override.is_force_add()) or "/" in key or key.startswith("hydra"):
            continue
        if key in GROUPS or key in fields or any(key.startswith(f"{name}.") for name in open_dicts):
            continue
        raise ConfigError(did_you_mean("config key", key, fields, listed_by="`python -m pipelines.run --cfg job`"))


def _schema_keys(schema: type, prefix: str = "") -> tuple[list[str], list[str]]:
    """Dotted names of every field under `schema`, and of the dict fields (which take any key)."""
    fields, open_dicts = [], []
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        name, hint = f"{prefix}{field.name}", hints[field.name]
        fields.append(name)
        if dataclasses.is_dataclass(hint):
            nested_fields, nested_dicts = _schema_keys(hint, f"{name}.")
            fields += nested_fields
            open_dicts += nested_dicts
        elif typing.get_origin(hint) is dict:
            open_dicts.append(name)
    return fields, open_dicts


def _expand_sweeps(overrides: list[str]) -> Iterator[list[str]]:
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.lstrip("+").startswith("hydra")])
    choices = []
    for override in parsed:
        key = override.get_key_element()
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.get_value_element_as_str()]
        choices.append([f"{key}={value}" for value in values])
    return (list(combination) for combination in itertools.product(*choices))


def _check_group_choices(overrides: list[str], searchpath: list[str]) -> None:
    loader = GlobalHydra.instance().config_loader()
    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        if group not in GROUPS or override.is_delete():
            continue
        valid = [name for name in loader.get_group_options(group, config_name="config", overrides=searchpath)
                 if not name.endswith("_schema")]
        values = override.sweep_string_iterator() if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value not in valid:
                raise ConfigError(did_you_mean(group, value, valid))


def _compose(overrides: list[str], from_shell: bool = False) -> DictConfig:
    """Hydra's compose (the `hydra.compose` API's call), with its node; `from_shell` as Hydra's run does."""
    try:
        return GlobalHydra.instance().hydra.compose_config(config_name="config", overrides=overrides,
                                                           run_mode=RunMode.RUN, from_shell=from_shell)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(first_line(error) + _backend_key_hint(first_line(error))) from error


def _backend_key_hint(message: str) -> str:
    """For a key another backend's schema holds: which backends take it, or the schema's close fields."""
    found = re.search(r"Key '(\w+)' not in '(\w+)'", message)
    if found is None:
        return ""
    key = found[1]
    for group in BACKEND_GROUPS:
        schemas = backend_schemas(group)
        by_class = {schema.__name__: schema for schema in schemas.values()}
        if found[2] not in by_class:
            continue
        owners = [name for name, schema in schemas.items() if key in _field_names(schema)]
        if owners:
            return f" ({group}.{key} is a field of the {' and '.join(owners)} {group} backend, not of this one)"
        return f" ({did_you_mean(f'{group} field', key, _field_names(by_class[found[2]]))})"
    return ""


def _field_names(schema: type) -> list[str]:
    return [field.name for field in dataclasses.fields(schema)]


def report_failure(error: BaseException, debug: bool = False) -> int:
    """One line on stderr for whatever ended the command, its traceback in a log file (and on the
    console with `debug=true`); returns the exit code pipelines/exit_codes.py gives it."""
    code = exit_codes.of_exception(error)
    if debug:
        traceback.print_exception(error)
    if code in (exit_codes.INTERRUPTED, exit_codes.TERMINATED):
        print(f"quantgate: {interrupts.message()}", file=sys.stderr)
    elif code == exit_codes.INVALID_INPUT:
        print(f"quantgate: error: {redact(_user_message(error))}", file=sys.stderr)
    else:
        print(f"quantgate: failed: {redact(failure_line(error))}; traceback in {log_traceback(error)}",
              file=sys.stderr)
    return code


def _user_message(error: BaseException) -> str:
    if isinstance(error, OverrideParseException):  # Hydra's grammar: a stray word, an unclosed bracket
        return (f"cannot parse the overrides ({first_line(error)}); quote a value holding spaces, brackets "
                "or commas, e.g. 'eval.tasks=[a,b]' or \"model.source='/my models/x'\"")
    return str(error) if isinstance(error, UserError) else first_line(error)


def log_traceback(error: BaseException) -> str:
    """Write the traceback to the run's log file(s), or to a file of its own before a run has one;
    returns where it went."""
    record = logging.LogRecord("pipelines.failure", logging.ERROR, __file__, 0, "command failed", None,
                               (type(error), error, error.__traceback__))
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
    if files:
        return ", ".join(h.baseFilename for h in files)
    fd, path = tempfile.mkstemp(prefix="quantgate-failure-", suffix=".log")
    with os.fdopen(fd, "w") as handle:
        handle.write(redact("".join(traceback.format_exception(error))))
    return path
