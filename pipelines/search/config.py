"""The recipe search's own keys (conf/search/<name>.yaml, `search.*` overrides), typed and validated.

    python -m pipelines.search quant=[fp8,w8a8] search.confirmation_share=0.4 search.budget.max_items=2000
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipelines.config import _fraction, _positive
from pipelines.errors import ConfigError


@dataclass
class SearchBudget:
    max_candidates: int = 8
    # Search-split items scored across candidates (checked before each one); None: no limit.
    max_items: int | None = None

    def __post_init__(self) -> None:
        _positive("search.budget", max_candidates=self.max_candidates, max_items=self.max_items)


@dataclass
class SearchConfig:
    name: str = "default"
    # The schemes (conf/quant names) candidates are built from; `quant=[a,b]` on the command line sets them.
    schemes: list[str] = field(default_factory=lambda: ["fp8", "w8a8", "awq"])
    confirmation_share: float = 0.5
    max_kept: int = 3
    budget: SearchBudget = field(default_factory=SearchBudget)
    # Where the search writes its runs, summary, chart and recipe; None: outputs/<date>/<time>-<model>-search-<id>.
    output_dir: str | None = None

    def __post_init__(self) -> None:
        _fraction("search", "confirmation_share", self.confirmation_share)
        if not self.schemes:
            raise ConfigError("search.schemes is empty: name at least one conf/quant scheme, e.g. quant=[fp8]")
        if self.max_kept < 0:
            raise ConfigError(f"search.max_kept={self.max_kept} must be >= 0")


def load_search_config(name: str, overrides: list[str]) -> SearchConfig:
    """conf/search/<name>.yaml with `search.<key>=<value>` overrides applied, validated."""
    path = files("pipelines.conf") / "search" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.name.removesuffix(".yaml") for p in (files("pipelines.conf") / "search").iterdir())
        raise ConfigError(f"search={name} is not a search config; choose from {', '.join(choices)}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(SearchConfig), OmegaConf.create(path.read_text()),
                               {"name": name}, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as error:
        raise ConfigError(f"search config: {str(error).splitlines()[0]}; the keys are in conf/search/{name}.yaml") \
            from error
