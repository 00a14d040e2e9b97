"""Checkpoints: an interrupted run resumed from its last complete checkpoint ends exactly like an uninterrupted one."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from pipeline.finetune import finetune
from pipeline.train import checkpoint as ckpt

from .recipe_helpers import tiny_recipe

STEPS = ["train.steps=7", "train.checkpoint_every=2", "train.keep_checkpoints=2"]


class Interrupted(Exception):
    pass


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_resume_after_interruption_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    # Dropout 0.1 is on (tiny_recipe), so equal results also need the RNG states restored, not just the weights.
    full = finetune(tiny_recipe(tiny_model_dir, tmp_path / "full", extra=STEPS))

    recipe = tiny_recipe(tiny_model_dir, tmp_path / "cut", extra=STEPS)

    def crash(step: int, loss: float) -> None:
        if step == 5:  # after checkpoint-4 was written, before checkpoint-6
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(recipe, on_step=crash)
    run = tmp_path / "cut" / "run"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]
    # A save killed half-way leaves only a hidden temporary folder; an incomplete folder has no marker.
    (run / ".tmp-checkpoint-6-x").mkdir()
    (run / "checkpoint-6").mkdir()
    (run / "checkpoint-6" / "training_state.pt").write_bytes(b"truncated")

    resumed = finetune(recipe, resume=True)
    assert resumed["training"]["resumed_from"].endswith("checkpoint-4")
    assert resumed["training"]["start_step"] == 4
    assert resumed["steps"] == 7

    # Per-step losses after the resume point match; the history before it comes from the checkpoint.
    assert resumed["training"]["losses"] == pytest.approx(full["training"]["losses"], abs=1e-6)
    a, b = _adapter(tmp_path / "full" / "run"), _adapter(run)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    # keep_checkpoints=2: only the two newest complete checkpoints remain, stale temporaries are gone.
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [4, 6]
    assert not list(run.glob(".tmp-checkpoint-*"))


def test_resume_without_checkpoint_starts_from_zero(tiny_model_dir, tmp_path):
    report = finetune(tiny_recipe(tiny_model_dir, tmp_path, extra=["train.steps=2"]), resume=True)
    assert report["training"]["start_step"] == 0 and report["training"]["resumed_from"] is None


def test_latest_checkpoint_ignores_incomplete(tmp_path):
    for step, complete in ((3, True), (9, False), (6, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / ckpt.COMPLETE).write_text(str(step))
    (tmp_path / ".tmp-checkpoint-12-abc").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    shutil.rmtree(tmp_path / "checkpoint-6")
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
