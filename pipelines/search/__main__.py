"""quantgate's recipe search: the cheapest variant of this model that passes the gate.

    python -m pipelines.search                                  # embedded model, schemes fp8, w8a8, awq
    python -m pipelines.search quant=[fp8] search.budget.max_candidates=4 search.budget.max_items=2000
    python -m pipelines.search quant=[fp8,w8a8] eval.limit=200 bench=off search.output_dir=out/search

Every override but `quant=[...]` and `search.*` is the run's (pipelines.run's config groups and
keys); `quant=[a,b]` lists the schemes the candidates are built from. A command of its own, not a
config group of pipelines.run: a run is one Hydra job per variant, decided in advance, while the
search decides which variant to run next from the last one's verdict, inside one process.

Exit codes (pipelines/exit_codes.py): 0 the chosen recipe PROMOTEs on the confirmation split; 1 its
confirmation verdict blocks, or no candidate passed the search within the budget; 2 bad input;
3 a stage failed.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from pipelines import interrupts, logs, preflight
from pipelines.cli import MULTIRUN_FLAGS, compose_all, report_failure
from pipelines.errors import ConfigError
from pipelines.models import offline_environment
from pipelines.redact import RedactSecrets
from pipelines.search.config import SearchConfig, load_search_config
from pipelines.search.runner import check, search

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def parse(argv: list[str]) -> tuple[list[str] | None, SearchConfig, list[str]]:
    """The schemes of `quant=[...]` (None: the search config's), the search config, the run's overrides."""
    if MULTIRUN_FLAGS & set(argv):
        raise ConfigError("python -m pipelines.search runs one search; drop -m (list the schemes as quant=[a,b])")
    schemes, name, search_overrides, run_overrides = None, "default", [], []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "quant":
            parsed = OverridesParser.create().parse_override(arg).value()
            schemes = [str(s) for s in parsed] if isinstance(parsed, list) else [str(parsed)]
        elif key == "search":
            name = value
        elif key.startswith("search."):
            search_overrides.append(arg.removeprefix("search."))
        else:
            run_overrides.append(arg)
    return schemes, load_search_config(name, search_overrides), run_overrides


def main() -> None:
    argv = sys.argv[1:]
    logs.show_tracebacks("debug=true" in argv)
    interrupts.install()
    with logs.redacted_console():
        try:
            code = _search(argv)
        except BaseException as error:  # one line and its exit code, as pipelines.run does
            code = report_failure(error, debug="debug=true" in argv)
    sys.exit(code)


def _search(argv: list[str]) -> int:
    from pipelines.search.summary import text_table  # plotly (the chart beside the table): once configs passed

    schemes, search_cfg, overrides = parse(argv)
    schemes = schemes or search_cfg.schemes
    configs = [compose_all([*overrides, f"quant={scheme}"])[0] for scheme in schemes]
    output_dir = Path(search_cfg.output_dir or f"outputs/{time.strftime('%Y-%m-%d/%H-%M-%S')}-"
                      f"{configs[0].model.name}-search-{secrets.token_hex(4)}")
    _log_to(output_dir)
    for cfg in configs:
        check(cfg)
        preflight.preflight(cfg)
    offline_environment(configs[0].model)
    result = search(configs, search_cfg, output_dir)
    print(text_table(result))
    print(f"search: {result.seconds:.0f} s wall; outputs in {output_dir}")
    return result.exit_code


def _log_to(output_dir: Path) -> None:
    """As pipelines.run's logging (conf/hydra/job_logging/quantgate.yaml): quantgate's own records on
    the console, every record in <output dir>/search.log, secrets redacted in both."""
    output_dir.mkdir(parents=True, exist_ok=True)
    console, file = logging.StreamHandler(sys.stdout), logging.FileHandler(output_dir / "search.log")
    console.addFilter(logs.OwnRecordsOnly())
    console.setFormatter(logs.ConsoleFormatter(FORMAT))
    file.setFormatter(logging.Formatter(FORMAT))
    for handler in (console, file):
        handler.addFilter(RedactSecrets())
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.captureWarnings(True)


if __name__ == "__main__":
    main()
