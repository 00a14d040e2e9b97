"""--resume continues the run the checkpoint holds, or says exactly what it changed: stored recipe and data hashes,
refused optimization changes, allowed changes really applied and recorded, data hashed when loaded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import RecipeError, ResumeError
from pipeline.finetune import finetune
from pipeline.train import checkpoint as ckpt

from .recipe_helpers import tiny_recipe, write_questions

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=0", "train.warmup_steps=2"]


class Interrupted(Exception):
    pass


def _stop_at(step_wanted: int):
    def stop(step: int, loss: float) -> None:
        if step == step_wanted:
            raise Interrupted
    return stop


@pytest.fixture
def interrupted_run(tiny_model_dir, tmp_path):
    """A run stopped after step 3: checkpoint-2 holds lr 1e-2 (tiny_recipe), linear schedule, warmup 2."""
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=STEPS)
    with pytest.raises(Interrupted):
        finetune(recipe, on_step=_stop_at(3))
    stored = ckpt.read_run_info(tmp_path / "run" / "checkpoint-2")
    assert stored["recipe"]["train"]["lr"] == 1e-2
    loaded = hashlib.sha256((tmp_path / "train.jsonl").read_bytes()).hexdigest()
    assert stored["data_files"]["train"]["sha256"] == loaded
    return tmp_path


def test_resume_refuses_a_changed_learning_rate(tiny_model_dir, interrupted_run):
    recipe = tiny_recipe(tiny_model_dir, interrupted_run, extra=STEPS + ["train.lr=5e-3"])
    with pytest.raises(ResumeError) as err:
        finetune(recipe, resume=True)
    message = str(err.value)
    assert "train.lr: checkpoint 0.01, now 0.005" in message and "--allow-changes train.lr" in message
    assert "from step 2" in message


def test_allowed_lr_change_is_applied_and_recorded(tiny_model_dir, interrupted_run):
    recipe = tiny_recipe(tiny_model_dir, interrupted_run, extra=STEPS + ["train.lr=5e-3", "train.log_every=2"])
    report = finetune(recipe, resume=True, allow_changes=("train.lr",))
    changes = {c["key"]: c for c in report["training"]["changes_on_resume"]}
    assert changes["train.lr"] == {"key": "train.lr", "checkpoint": 0.01, "now": 0.005, "from_step": 2,
                                   "kind": "allowed"}
    assert changes["train.log_every"]["kind"] == "free"
    lrs = report["training"]["lrs"]
    # Steps 1-2 ran with the checkpoint's lr (warmup: 0, 0.5 x 1e-2); from step 3 the new base lr really applies
    # (linear decay after warmup 2 of 4 steps: factor 1.0 then 0.5), not the restored scheduler's 1e-2.
    assert lrs == pytest.approx([0.0, 5e-3, 5e-3, 2.5e-3])
    # Later checkpoints carry the change on, so a second resume still reports it.
    carried = ckpt.read_run_info(interrupted_run / "run" / "checkpoint-4")["changes"]
    assert {"train.lr", "train.log_every"} == {c["key"] for c in carried}


def test_changes_a_checkpoint_cannot_follow_are_refused_even_when_allowed(tiny_model_dir, interrupted_run):
    recipe = tiny_recipe(tiny_model_dir, interrupted_run, extra=STEPS + ["train.batch_size=2"])
    with pytest.raises(ResumeError, match="train.batch_size.*cannot change on resume"):
        finetune(recipe, resume=True, allow_changes=("train.batch_size",))


def test_allow_changes_with_a_typo_is_an_error(tiny_model_dir, interrupted_run):
    recipe = tiny_recipe(tiny_model_dir, interrupted_run, extra=STEPS)
    with pytest.raises(RecipeError, match="--allow-changes 'train.rl'"):
        finetune(recipe, resume=True, allow_changes=("train.rl",))


def test_data_is_hashed_when_loaded_and_a_swapped_file_is_refused_on_resume(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=STEPS)
    train = Path(recipe.data.train)
    loaded_sha = hashlib.sha256(train.read_bytes()).hexdigest()

    def swap(step: int, loss: float) -> None:
        if step == 2:
            write_questions(train, 16, offset=1)  # another file under the same name, mid-run

    report = finetune(recipe, on_step=swap)
    assert report["data"]["files"][0]["sha256"] == loaded_sha  # what was trained on, not what is there now
    assert hashlib.sha256(train.read_bytes()).hexdigest() != loaded_sha

    with pytest.raises(ResumeError, match="(?s)data.train.sha256.*--allow-changes data.train"):
        finetune(recipe, resume=True)
    resumed = finetune(recipe, resume=True, allow_changes=("data.train",))
    (change,) = resumed["training"]["changes_on_resume"]
    assert change["key"] == "data.train.sha256" and change["checkpoint"] == loaded_sha and change["from_step"] == 4


def _kill_run(point: str, name: str, args: list[str], nth: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tests.pipeline.kill_at", point, name, str(nth), "--", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _recipe_file(tmp_path: Path, model_dir: Path) -> Path:
    recipe = tiny_recipe(model_dir, tmp_path, extra=STEPS)
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe.to_dict()))  # JSON is YAML
    return path


@pytest.mark.slow
@pytest.mark.parametrize("point,name,nth", [
    ("folder:written", "checkpoint-2", 1),  # checkpoint complete in its temporary, not yet renamed
    ("folder:aside", "adapter", 1),         # the old adapter aside, the new not yet in: no adapter/
    ("folder:replaced", "adapter", 1),      # new adapter in, the old aside copy not yet deleted
    ("write_text:written", "report.json", 1),
])
def test_kill_at_each_rename_then_resume_finishes_cleanly(tiny_model_dir, tmp_path, point, name, nth):
    recipe = _recipe_file(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    args = ["finetune", "--recipe", str(recipe), "--plain"]
    if name == "adapter":  # a replace needs an adapter already there: a finished run, then resumed again
        assert _kill_run("never", "x", args).returncode == 0
        old_adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
        args = args + ["--resume"]
    killed = _kill_run(point, name, args, nth)
    assert killed.returncode == 137, killed.stderr
    if point == "folder:aside":
        assert not (run / "adapter").exists() and (run / ".adapter.old").is_dir()
    done = _kill_run("never", "x", ["finetune", "--recipe", str(recipe), "--plain", "--resume"])
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "report.json").read_text())["status"] == "completed"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    if name == "adapter":  # training had finished: the adapter is the same weights either way
        assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == old_adapter
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".run.lock"]
    assert leftovers == []


def test_a_new_collective_timeout_is_a_free_change():
    from pipeline.train import resume_policy

    before = {"train": {"lr": 0.01}, "distributed": {"timeout_minutes": 30.0}}
    after = {"train": {"lr": 0.01}, "distributed": {"timeout_minutes": 5.0}}
    stored = resume_policy.run_info(before, {}, [])
    changes = resume_policy.compare(stored, after, {}, step=3, allowed=())
    assert [(c.key, c.kind) for c in changes] == [("distributed.timeout_minutes", "free")]
    resume_policy.enforce(changes, "checkpoint-3")  # a free change never needs --allow-changes
