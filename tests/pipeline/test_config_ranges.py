"""Every number in the recipe schema has a range, checked when the recipe loads."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from pipeline.core.config import Recipe, RecipeError, load_recipe


def _number_fields():
    for section in dataclasses.fields(Recipe):
        cls = section.type if isinstance(section.type, type) else typing.get_type_hints(Recipe)[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            if inner[0] in (int, float):
                yield f"{section.name}.{f.name}", f


def test_every_number_in_the_schema_has_a_range():
    missing = [key for key, f in _number_fields() if "range" not in f.metadata]
    assert missing == []


@pytest.mark.parametrize("override,message", [
    ("train.steps=0", "'train.steps' must be at least 1, got 0"),
    ("train.lr=0", "'train.lr' must be in (0.0, 1.0], got 0.0"),
    ("train.lr=.nan", "'train.lr' must be a finite number"),
    ("lora.dropout=1", "'lora.dropout' must be in [0.0, 1.0), got 1.0"),
    ("train.max_grad_norm=0", "'train.max_grad_norm' must be greater than 0.0"),
    ("train.seed=-1", "'train.seed' must be in [0, 4294967295], got -1"),
    ("eval.limit=0", "'eval.limit' must be at least 1, got 0"),
    ("data.max_length=4", "'data.max_length' must be at least 8, got 4"),
])
def test_out_of_range_values_name_key_range_and_value(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(None, [override])
    assert message in str(err.value)


def test_boundaries_and_nulls_are_accepted():
    recipe = load_recipe(None, ["train.steps=1", "train.checkpoint_every=0", "train.keep_checkpoints=0",
                                "train.max_grad_norm=null", "eval.limit=null", "lora.dropout=0", "train.lr=1"])
    assert recipe.train.steps == 1 and recipe.train.max_grad_norm is None and recipe.eval.limit is None
