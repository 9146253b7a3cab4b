"""The search command's arguments (pipelines/search/__main__.py) and `quant=<file.yaml>` in the run's CLI."""

from __future__ import annotations

import pytest

from pipelines.cli import expand_yaml_choices
from pipelines.errors import ConfigError
from pipelines.search.__main__ import parse

RECIPE = """defaults:
  - quant_schema
name: fp8-keep1
backend: llmcompressor
method: rtn
scheme: FP8_DYNAMIC
ignore: [lm_head, model.layers.0.mlp.down_proj]
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "out" / "conf" / "quant" / "fp8-keep1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(RECIPE)
    return path


def test_a_quant_yaml_file_composes_as_that_quant_config(recipe):
    from pipelines.pipeline import compose_config

    cfg = compose_config([f"quant={recipe}", "tracking=off"])
    assert (cfg.quant.name, cfg.quant.ignore) == ("fp8-keep1", ["lm_head", "model.layers.0.mlp.down_proj"])


def test_the_file_folder_joins_a_searchpath_already_given(recipe):
    argv = expand_yaml_choices([f"quant={recipe}", "hydra.searchpath=[file:///elsewhere]", "--cfg", "job"])
    assert argv == ["quant=fp8-keep1", f"hydra.searchpath=[file:///elsewhere,file://{recipe.parent.parent}]",
                    "--cfg", "job"]


def test_a_yaml_outside_a_group_folder_is_refused(tmp_path):
    path = tmp_path / "fp8-keep1.yaml"
    path.write_text(RECIPE)
    with pytest.raises(ConfigError, match="folder named quant/"):
        expand_yaml_choices([f"quant={path}"])


def test_names_are_left_alone():
    assert expand_yaml_choices(["quant=fp8", "eval.limit=5"]) == ["quant=fp8", "eval.limit=5"]


def test_search_arguments_split_into_schemes_search_keys_and_run_overrides():
    schemes, search, run = parse(["quant=[fp8,w8a8]", "search.budget.max_items=300", "eval.limit=20",
                                  "search.confirmation_share=0.4"])
    assert schemes == ["fp8", "w8a8"] and run == ["eval.limit=20"]
    assert (search.budget.max_items, search.confirmation_share) == (300, 0.4)


def test_one_scheme_without_brackets_and_the_default_schemes():
    assert parse(["quant=fp8"])[0] == ["fp8"]
    schemes, search, _ = parse([])
    assert schemes is None and search.schemes == ["fp8", "w8a8", "awq"]


@pytest.mark.parametrize("argv, message", [(["search.budget.max_candidates=0"], "must be > 0"),
                                           (["search.nonsense=1"], "nonsense"),
                                           (["search=missing"], "not a search config"),
                                           (["-m", "quant=[fp8]"], "drop -m")])
def test_bad_search_arguments_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(argv)
