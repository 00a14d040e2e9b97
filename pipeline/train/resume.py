"""``--resume``: find the last complete checkpoint, refuse changes the policy forbids, restore the run's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.core.config import Recipe
from pipeline.train import checkpoint as ckpt
from pipeline.train import fsdp, resume_policy
from pipeline.train.distributed import reseed_new_rank


def resume_changes(recipe: Recipe, data_facts: dict[str, dict[str, Any]], found: Path,
                   allow_changes: tuple[str, ...], log: Callable[[str], None],
                   world_size: int = 1) -> tuple[list[dict[str, Any]], set[str]]:
    """Refuse optimization changes against the checkpoint unless allowed; return (all changes so far as
    records, the keys changed now)."""
    resume_policy.check_allowed_keys(allow_changes, recipe.to_dict())
    stored = ckpt.read_run_info(found)
    if stored is None:
        log(f"warning: {found} predates stored recipes; cannot check this resume's settings against it")
        return [], set()
    step = int(ckpt.read_state(found)["step"])
    changes = resume_policy.compare(stored, recipe.to_dict(), data_facts, step=step, allowed=allow_changes,
                                    world_size=world_size)
    resume_policy.enforce(changes, str(found))
    for change in changes:
        log(f"resume: {change.describe()} ({change.kind}, from step {step})")
    return list(stored.get("changes", [])) + resume_policy.as_records(changes), {c.key for c in changes}


def restore(trainer: Any, state: Any, output_dir: Path, *, data_facts: dict[str, dict[str, Any]],
            allow_changes: tuple[str, ...], log: Callable[[str], None]) -> tuple[list[dict[str, Any]], Optional[str]]:
    """Model, optimizer, schedule, batch order and history from the last complete checkpoint into ``trainer`` and
    ``state`` (a train.loop.Trainer and LoopState); returns (the run's changes on resume, the checkpoint used)."""
    recipe, dist = trainer.recipe, trainer.dist
    found = ckpt.latest_checkpoint(output_dir)
    if found is None:
        log(f"--resume: no complete checkpoint in {output_dir}, starting from step 0")
        return [], None
    # Checked before anything is restored: the refusal must name the setting, not a shape mismatch.
    fsdp.check_resume(found, dist.world_size, trainer.use_fsdp)
    run_changes, changed = resume_changes(recipe, data_facts, found, allow_changes, log, dist.world_size)
    if trainer.use_fsdp:  # full state gathered on rank 0 (pipeline/train/fsdp.py); every rank takes part
        saved = fsdp.load_checkpoint(found, trainer)
    else:
        saved = ckpt.load_checkpoint(found, model=trainer.model, optimizer=trainer.optimizer,
                                     scheduler=trainer.scheduler, rank=dist.rank)
    trainer.batcher.load_state_dict(saved["batcher"])
    state.step, state.history = int(saved["step"]), saved["history"]
    if not saved["rng_restored"] and not trainer.use_fsdp:  # more ranks than saved the checkpoint
        reseed_new_rank(recipe.train.seed, state.step, dist)
    if changed & {"train.lr", "train.weight_decay"}:
        resume_policy.apply_to_optimizer(trainer.optimizer, trainer.scheduler, recipe.train.lr,
                                         recipe.train.weight_decay)
    log(f"resumed from {found} at step {state.step}")
    return run_changes, str(found)
