"""The training loop: the module that computes the loss (wrapped for DDP or FSDP), the optimizer and schedule,
one optimizer step, and the loop of steps with its history.

Our own loop rather than the HF Trainer: the Trainer's reported loss differs between transformers 4.57 and 5.x for
the same rows (a change in how it normalizes), it cannot apply the output layer only at answer positions (halves
the cost of a step on a small model), and a loop this size is easier to audit than the Trainer's callbacks.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from pipeline.core.config import Recipe
from pipeline.data.batching import collate
from pipeline.data.packing import plan_step
from pipeline.model.load import lora_parameters
from pipeline.model.precision import autocast
from pipeline.train import checkpoint as ckpt
from pipeline.train import fsdp
from pipeline.train.distributed import Dist, rank_rng_states
from pipeline.train.loss import AnswerLoss
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.progress import Progress
from pipeline.train.step import AnswerPositionLoss, accumulate


@dataclass
class LoopState:
    """What the loop has done so far: checkpoints store it, --resume restores it, the report reads it."""

    step: int = 0
    start_step: int = 0
    history: dict[str, Any] = field(default_factory=lambda: {"loss": [], "lr": [], "tokens": [], "eval_before": None})
    tokens_this_run: int = 0
    train_seconds: float = 0.0


class Trainer:
    """The module, optimizer and schedule of one run, and its optimizer step.

    ``plan`` (a memory plan, pipeline/train/memory_plan.py) selects the planned path: a step's sequences re-cut by
    tokens (pipeline/train/step.py); without one, ``grad_accum`` padded micro-batches of ``batch_size``.
    """

    def __init__(self, recipe: Recipe, model: Any, *, examples: list, batcher: Any, pad_id: int, dist: Dist,
                 device: torch.device, precision: str, plan: Any = None, use_fsdp: bool = False):
        self.recipe, self.model, self.examples, self.batcher, self.pad_id = recipe, model, examples, batcher, pad_id
        self.dist, self.device, self.precision, self.plan, self.use_fsdp = dist, device, precision, plan, use_fsdp
        # Wrapped before the optimizer is built: FSDP replaces the parameters the optimizer must hold.
        self.module = self._wrap()
        self.params = [p for _, p in lora_parameters(model)]
        self.optimizer = build_optimizer(recipe, self.params, device)
        self.scheduler = build_scheduler(recipe, self.optimizer)

    def _wrap(self) -> torch.nn.Module:
        module: torch.nn.Module = AnswerPositionLoss(self.model) if self.plan is not None else AnswerLoss(self.model)
        if self.use_fsdp:
            d = self.recipe.distributed
            return fsdp.wrap(module, self.model, self.device, cpu_offload=d.cpu_offload,
                             use_orig_params=d.use_orig_params)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        return module

    def step(self) -> tuple[float, int]:
        """One optimizer step: (this rank's mean loss, its non-padding tokens)."""
        recipe = self.recipe
        step_loss, step_tokens = self._planned_micro_steps() if self.plan is not None else self._micro_steps()
        if self.use_fsdp:
            fsdp.clip_grad_norm(self.module, recipe.train.max_grad_norm)
        elif recipe.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, recipe.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, step_tokens

    def _planned_micro_steps(self) -> tuple[float, int]:
        """One optimizer step's sequences, cut by the memory plan; (mean answer loss, non-padding tokens)."""
        device, module = self.device, self.module
        chosen = [self.examples[i] for i in next(self.batcher)]
        plan = self.plan
        step = plan_step(chosen, self.pad_id, token_budget=plan.token_budget, packing=plan.packing,
                         balance=plan.balance, round_to=plan.round_to, varlen=plan.varlen)
        loss = accumulate(module, step, device, autocast=lambda: autocast(self.precision, device),
                          no_sync=module.no_sync if self.dist.enabled else None)
        return float(loss), step.real_tokens  # the one host sync of the step

    def _micro_steps(self) -> tuple[float, int]:
        """``grad_accum`` micro-batches of ``batch_size`` sequences, the loss a mean per micro-batch."""
        accum, device = self.recipe.train.grad_accum, self.device
        step_loss: Any = 0.0
        step_tokens = 0
        for micro in range(accum):
            indices = next(self.batcher)
            batch = collate([self.examples[i] for i in indices], self.pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = contextlib.nullcontext()
            if self.dist.enabled and micro < accum - 1:
                sync = self.module.no_sync()  # all-reduce gradients once, at the last micro-batch
            with sync:
                with autocast(self.precision, device):
                    loss_sum, count = self.module(**batch)
                # Over all ranks' answer tokens: N processes train as one with the same global batch.
                loss = self.dist.token_mean(loss_sum, count)
                (loss / accum).backward()
            # Accumulated on the device and counted on the host: no GPU sync per micro-step.
            step_loss = step_loss + loss.detach() / accum
            step_tokens += sum(len(self.examples[i]["input_ids"]) for i in indices)
        return float(step_loss), step_tokens


def train_loop(trainer: Trainer, state: LoopState, *, plain: Optional[bool] = None,
               after_step: Callable[[], None] = lambda: None,
               on_step: Optional[Callable[[int, float], None]] = None) -> None:
    """Optimizer steps until ``train.steps``: history, progress lines, ``after_step`` (checkpoints), ``on_step``."""
    recipe, dist, device = trainer.recipe, trainer.dist, trainer.device
    progress = Progress(recipe.train.steps, start_step=state.step, log_every=recipe.train.log_every,
                        plain=plain, enabled=dist.main)
    trainer.model.train()  # gradient checkpointing and dropout only act in train mode
    t_train = time.monotonic()
    state.start_step = state.step
    try:
        while state.step < recipe.train.steps:
            t_step = time.monotonic()
            lr = trainer.scheduler.get_last_lr()[0]
            step_loss, step_tokens = trainer.step()
            state.step += 1
            step_loss = dist.mean(step_loss, device)
            step_tokens = int(dist.sum(step_tokens, device))
            state.tokens_this_run += step_tokens
            history = state.history
            history["loss"].append(round(step_loss, 6))
            history["lr"].append(lr)
            history["tokens"].append(step_tokens)
            # Per-step duration for the report's throughput curve (checkpoints from before it lack the key).
            history.setdefault("seconds", []).append(round(time.monotonic() - t_step, 4))
            progress.update(state.step, step_loss, lr, step_tokens / max(time.monotonic() - t_step, 1e-9))
            after_step()
            dist.barrier()
            if on_step is not None:
                on_step(state.step, step_loss)
    finally:
        progress.close()
    state.train_seconds = time.monotonic() - t_train


def checkpoint_if_due(trainer: Trainer, state: LoopState, output_dir: Path, run_info: dict[str, Any]) -> None:
    """Every ``train.checkpoint_every`` steps: every rank's RNG into rank 0's checkpoint (a collective)."""
    every = trainer.recipe.train.checkpoint_every
    if not every or state.step % every:
        return
    rng_states = rank_rng_states(trainer.dist)
    if trainer.dist.main:
        ckpt.save_checkpoint(output_dir, state.step, model=trainer.model, optimizer=trainer.optimizer,
                             scheduler=trainer.scheduler, batcher_state=trainer.batcher.state_dict(),
                             history=state.history, keep=trainer.recipe.train.keep_checkpoints, run=run_info,
                             rng_states=rng_states)
