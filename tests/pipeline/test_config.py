"""Recipe parsing: the shipped recipes load, overrides apply, and mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_seed_recipe_carries_the_articles_settings() -> None:
    r = load_recipe(ROOT / "recipes" / "medqa-qlora-7b.yaml")
    assert (r.lora.r, r.lora.alpha) == (64, 128)
    assert r.quantization.mode == "nf4" and r.quantization.compute_dtype == "bfloat16"
    assert r.train.lr == pytest.approx(2e-4) and r.train.schedule == "cosine"
    assert (r.train.steps, r.train.batch_size) == (3000, 8)
    assert r.data.target == "letter" and r.eval.scoring == "letter"


def test_demo_recipe_uses_text_target_and_cloze_scoring() -> None:
    r = load_recipe(ROOT / "recipes" / "demo-cpu.yaml")
    assert r.data.source == "demo" and r.data.target == "text" and r.eval.scoring == "cloze"
    assert r.quantization.mode == "none" and r.train.device == "cpu"


def test_overrides_are_parsed_as_yaml_and_typed() -> None:
    r = load_recipe(
        ROOT / "recipes" / "demo-cpu.yaml",
        ["train.steps=5", "lora.target_modules=[q_proj, v_proj]", "eval.limit=null", "train.lr=3e-4"],
    )
    assert r.train.steps == 5
    assert r.lora.target_modules == ["q_proj", "v_proj"]
    assert r.eval.limit is None
    assert r.train.lr == pytest.approx(3e-4)


def test_defaults_without_a_file() -> None:
    assert load_recipe(None) == Recipe()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train:\n  stepz: 10\n", "unknown key 'train.stepz'"),
        ("trian:\n  steps: 10\n", "unknown key 'trian'"),
        ("train:\n  steps: ten\n", "key 'train.steps' must be an integer, got 'ten'"),
        ("train:\n  steps: 1.5\n", "key 'train.steps' must be an integer"),
        ("lora:\n  r: true\n", "key 'lora.r' must be an integer"),
        ("quantization:\n  mode: int3\n", "key 'quantization.mode' must be one of 'nf4', 'none'"),
        ("lora:\n  target_modules: q_proj\n", "key 'lora.target_modules' must be a list"),
        ("lora:\n  target_modules: [q_proj, 3]\n", "key 'lora.target_modules[1]' must be a string"),
        ("model:\n  gradient_checkpointing: yes please\n", "key 'model.gradient_checkpointing' must be true or false"),
        ("train: 5\n", "train must be a mapping"),
        ("- a\n- b\n", "expected a mapping of sections"),
        ("train: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_bad_override_forms() -> None:
    with pytest.raises(RecipeError, match="expected section.key=value"):
        load_recipe(None, ["steps=10"])
    with pytest.raises(RecipeError, match="unknown key 'train.nope'"):
        load_recipe(None, ["train.nope=1"])


def test_missing_file_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "absent.yaml")


def test_add_bos_is_a_checked_choice_and_data_prompt_is_gone() -> None:
    from pipeline.core.config import RecipeError, load_recipe

    assert load_recipe(None).data.add_bos == "auto"
    assert load_recipe(None, ["data.add_bos=never"]).data.add_bos == "never"
    with pytest.raises(RecipeError, match="key 'data.add_bos' must be one of 'auto', 'always', 'never', got 'sometimes'"):
        load_recipe(None, ["data.add_bos=sometimes"])
    # data.prompt was read by nothing (issue 10): a recipe that sets it is told so instead of being ignored.
    with pytest.raises(RecipeError, match="unknown key 'data.prompt'"):
        load_recipe(None, ["data.prompt=medqa"])
