"""Recipes: YAML files read into the schema's dataclasses (the schema every job shares).

A recipe is a YAML mapping whose keys mirror the dataclasses of `schema`; missing keys keep
their defaults, unknown keys and wrongly typed values are errors (`convert`), values no job
can use are refused (`rules`). `--set a.b=value` overrides are type-checked against the same
fields; shipped recipes live in the repository's `recipes/` folder, installed with cameo as
`cameo.recipes`, and a recipe may `extends:` another (`recipes`).
"""

from cameo_cli.config.convert import dump_recipe, parse_section, recipe_to_dict, recipe_to_yaml
from cameo_cli.config.recipes import (
    apply_override,
    find_recipe,
    list_recipes,
    load_recipe,
    recipe_from_dict,
)
from cameo_cli.config.schema import (
    CHOICES,
    AlignmentConfig,
    BackboneConfig,
    CodecConfig,
    DataConfig,
    DiffusionConfig,
    EvaluateConfig,
    Recipe,
    SampleConfig,
    TrainConfig,
)

__all__ = [
    "CHOICES",
    "AlignmentConfig",
    "BackboneConfig",
    "CodecConfig",
    "DataConfig",
    "DiffusionConfig",
    "EvaluateConfig",
    "Recipe",
    "SampleConfig",
    "TrainConfig",
    "apply_override",
    "dump_recipe",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "parse_section",
    "recipe_from_dict",
    "recipe_to_dict",
    "recipe_to_yaml",
]
