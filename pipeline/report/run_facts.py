"""What a fine-tune's report says about its data, its training and its evaluation, from the run's recorded state.

The run (pipeline/finetune.py) passes what its phases produced; nothing here trains or scores.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from pipeline.core.config import Recipe
from pipeline.report.build import peak_memory


def data_facts(recipe: Recipe, data: Any, examples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": recipe.data.source,
        "files": data.files(),
        "train_rows": len(data.train),
        "eval_rows": len(data.eval),
        "contamination": data.overlap,
        "target": recipe.data.target,
        # Examples at max_length had their prompt's start cut (encode_example keeps the answer whole).
        "examples_at_max_length": sum(1 for e in examples if len(e["input_ids"]) >= recipe.data.max_length),
    }


# long: one flat table of the report's "training" section; split, its keys would be spread over several places
def training_facts(recipe: Recipe, state: Any, *, dist: Any, device: Any, precision: str, plan: Any,
                   guard_note: str, resumed_from: Optional[str], run_changes: list, t_start: float,
                   setup_peak: Optional[dict]) -> dict[str, Any]:
    """``state`` is the loop's LoopState (pipeline/train/loop.py); ``dist`` the run's Dist. Collective: the
    per-rank peaks are gathered from every rank."""
    t, losses, seconds = recipe.train, state.history["loss"], state.train_seconds
    tokens = state.tokens_this_run
    return {
        "steps": state.step,
        "start_step": state.start_step,
        "resumed_from": resumed_from,
        # What --resume changed against the checkpoints' recipe/data, and from which step (resume_policy).
        "changes_on_resume": run_changes,
        "world_size": dist.world_size,
        "distributed": {**dist.facts(), "strategy": recipe.distributed.strategy if dist.enabled else None,
                        "timeout_minutes": recipe.distributed.timeout_minutes},
        "precision": precision,
        "optimizer": t.optimizer,
        "batch_size_per_device": t.batch_size,
        "grad_accum": t.grad_accum,
        "memory_plan": plan.to_dict() if plan is not None else None,
        "packing": bool(plan.packing) if plan is not None else False,
        "adapter_gradient_check": guard_note,
        "wall_time_s": round(time.monotonic() - t_start, 1),
        "train_time_s": round(seconds, 1),
        # Non-padding tokens (prompt + answer) over all ranks, per second of this process's training loop.
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "tokens_per_second_per_device": round(tokens / seconds / dist.world_size, 1) if seconds > 0 else None,
        "peak_memory": peak_memory(device),
        # Collective (run on every rank): each rank's training peak, and its peak while loading.
        "peak_memory_per_rank": dist.gather_objects(peak_memory(device)),
        "setup_peak_memory_per_rank": dist.gather_objects(setup_peak),
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "mean_loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 6) if losses else None,
        "losses": losses,
        "lrs": state.history["lr"],
        # Per-step tokens (all ranks) and seconds, for the throughput curve and the TensorBoard log.
        "step_tokens": state.history["tokens"],
        "tokens_per_step": state.history["tokens"],  # the name scripts/gpu/dist_table.py and the DDP tests read
        "step_seconds": state.history.get("seconds", []),
    }


def eval_facts(recipe: Recipe, data: Any, before: Optional[dict], after: Optional[dict]) -> Optional[dict[str, Any]]:
    if not data.eval:
        return None
    facts = {"scoring": recipe.eval.scoring, "add_bos": recipe.data.add_bos, "file": str(data.eval_path),
             "before": before, "after": after}
    if not recipe.eval.before_training:
        facts.pop("before")
    return facts
