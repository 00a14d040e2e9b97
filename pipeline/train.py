"""``finetune(recipe)``: the whole QLoRA run in one readable file (torchtune-recipe style).

    data -> model (4-bit or fallback, LoRA) -> adapter-gradient guard -> [eval before] -> training loop
    (grad accumulation, autocast, clipping, schedule, checkpoints) -> adapter -> [eval after] -> report

Our own loop rather than the HF Trainer: the Trainer's loss normalization differs between transformers 4.57 and
5.x (REFERENCE.md), it cannot apply the output layer only at answer positions (halves the cost of a step on a
small model), and a loop this size is easier to audit than the Trainer's callbacks. Multi-GPU: launch with
``torchrun --nproc-per-node N``; each rank takes ``train.batch_size`` examples per micro-step (the seed recipe's
"batch 8 per GPU"), gradients are averaged by DDP, and rank 0 alone writes checkpoints, report and progress.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from kit import atomic
from pipeline import checkpoint as ckpt
from pipeline import report as rep
from pipeline.config import Recipe, RecipeError
from pipeline.model import (
    AdapterGradientError,
    UnsupportedError,
    adapters_without_gradient,
    choose_device,
    load_for_training,
    lora_parameters,
    resolve_model,
)
from pipeline.progress import Progress

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------
# Distributed setup (a no-op for one process)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def sum(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def setup_distributed() -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=torch.distributed.get_rank(), world_size=world_size, enabled=True)


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    train_path: Optional[Path] = None
    eval_path: Optional[Path] = None
    overlap: int = 0

    def files(self) -> list[dict[str, Any]]:
        out = []
        for path, rows in ((self.train_path, len(self.train)), (self.eval_path, len(self.eval))):
            if path is not None:
                out.append(rep.data_file_facts(path, rows))
        return out


def data_paths(recipe: Recipe, *, write_demo: bool = True) -> tuple[Optional[Path], Optional[Path]]:
    """(train, eval) files: the recipe's, or the embedded demo set written into ``<output_dir>/data``."""
    if recipe.data.source == "demo":
        from pipeline.demo_data import write_demo_data

        folder = Path(recipe.train.output_dir) / "data"
        if write_demo:
            return write_demo_data(folder, seed=recipe.train.seed)
        return folder / "train.jsonl", folder / "test.jsonl"
    if not recipe.data.train:
        raise RecipeError("recipe: data.train is not set: expected a MedQA JSONL file (or data.source: demo)")
    return Path(recipe.data.train), (Path(recipe.data.eval) if recipe.data.eval else None)


def load_data(recipe: Recipe, dist: Optional[Dist] = None) -> Data:
    from pipeline.data import find_overlap, load_questions

    dist = dist or Dist()

    if dist.main:
        train_path, eval_path = data_paths(recipe)
    dist.barrier()  # rank 0 writes the demo data once; the others read it
    if not dist.main:
        train_path, eval_path = data_paths(recipe, write_demo=False)
    data = Data(train_path=train_path, eval_path=eval_path)
    data.train = load_questions(train_path)
    if eval_path is not None:
        data.eval = load_questions(eval_path)
        data.overlap = len(find_overlap(data.train, data.eval))
    return data


# --------------------------------------------------------------------------------------------------------------
# Loss


class AnswerLoss(torch.nn.Module):
    """Summed cross-entropy over the answer tokens, and their count.

    The output layer runs only at the positions whose next token is an answer token (labels != -100): with a
    49k vocabulary and ~100-token prompts, full logits cost as much as the rest of a small model's step. The
    decoder and head are the base model's own modules (LoRA lives inside them), so DDP wraps this module.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        logits = base.get_output_embeddings()(hidden[:, :-1][mask]).float()
        return F.cross_entropy(logits, targets[mask], reduction="sum"), mask.sum()


def mean_answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    loss_sum, count = AnswerLoss(model)(**batch)
    return loss_sum / count.clamp(min=1)


# --------------------------------------------------------------------------------------------------------------
# Optimizer, schedule, precision


def build_optimizer(recipe: Recipe, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    name, t = recipe.train.optimizer, recipe.train
    if name == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if device.type != "cuda":
        raise UnsupportedError(
            f"train.optimizer is {name!r}: bitsandbytes' 8-bit optimizers need a GPU (they fail on CPU); "
            "use train.optimizer=adamw"
        )
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[recipe.train.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=recipe.train.warmup_steps,
                         num_training_steps=recipe.train.steps)


def choose_precision(recipe: Recipe, device: torch.device) -> str:
    wanted = recipe.train.precision
    if wanted == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if wanted == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UnsupportedError("train.precision is 'bf16' but this GPU has no bf16 support; use precision: auto")
    return wanted


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# --------------------------------------------------------------------------------------------------------------
# The run


def finetune(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    plain: Optional[bool] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> dict[str, Any]:
    """Train a LoRA adapter as the recipe says; return the report dict (also written to ``output_dir``).

    ``on_step(step, loss)`` is called after every optimizer step (tests use it to interrupt a run).
    """
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.monotonic()
    dist = setup_distributed()
    device = choose_device(recipe.train.device)
    if recipe.train.optimizer != "adamw" and device.type != "cuda":
        build_optimizer(recipe, [], device)  # raises the clear error before minutes of loading
    precision = choose_precision(recipe, device)
    from pipeline import memory_plan, step as fast_step  # issue 13: the planned fast path

    budget_bytes = memory_plan.apply_budget(device, recipe.train.memory_budget_gb)
    fast = recipe.train.micro_batch_tokens is not None
    output_dir = Path(recipe.train.output_dir)
    out = Progress(recipe.train.steps, log_every=recipe.train.log_every, plain=True, enabled=dist.main)

    existing = ckpt.latest_checkpoint(output_dir)
    if existing is not None and not resume:
        if not overwrite:
            raise RecipeError(
                f"{output_dir} already holds checkpoints ({existing.name}): pass --resume to continue that run, "
                "--overwrite to start again from scratch, or set train.output_dir to another folder"
            )
        if dist.main:
            for _, old in ckpt.list_checkpoints(output_dir):
                shutil.rmtree(old)
        dist.barrier()

    seed_everything(recipe.train.seed)
    data = load_data(recipe, dist)
    out.log(f"data: {len(data.train)} training questions from {data.train_path}"
            + (f", {len(data.eval)} evaluation questions from {data.eval_path}" if data.eval_path else ""))
    if data.overlap:
        out.log(f"warning: {data.overlap} evaluation questions also occur in the training file (contamination)")

    if dist.main:
        resolve_model(recipe.model.name_or_path)  # converts/builds once, before the other ranks look
    dist.barrier()
    model, tokenizer, info = load_for_training(recipe, device)
    examples, batcher = _encode_all(recipe, tokenizer, data, dist)

    # Adapter-gradient guard, before any optimizer step (see model.adapters_without_gradient for the design).
    probe = _probe_batch(recipe, examples, tokenizer, dist, device)
    missing = _guard(model, probe, precision, device, dist)
    if missing and info.quantization_path == "nf4" and recipe.quantization.on_unsupported == "fallback":
        reason = (f"adapter-gradient guard: {len(missing)} of {len(lora_parameters(model))} LoRA matrices got zero "
                  f"gradient on the 4-bit path (first: {missing[0]})")
        out.log(f"falling back to an unquantized base: {reason}")
        del model
        _free(device)
        model, tokenizer, info = load_for_training(recipe, device, force_fallback=reason)
        missing = _guard(model, probe, precision, device, dist)
    if missing:
        raise AdapterGradientError(
            f"{len(missing)} of {len(lora_parameters(model))} LoRA matrices got no gradient on the "
            f"{info.quantization_path} path (first: {missing[0]}); training would change nothing. "
            + ("Set quantization.on_unsupported=fallback to train on an unquantized base."
               if info.quantization_path == "nf4" else "Check lora.target_modules and the model.")
        )
    guard_note = f"all {len(lora_parameters(model))} LoRA matrices received a non-zero gradient before step 1"
    out.log(f"model: {info.resolved_path} | quantization {info.quantization_path} ({info.quantization_reason}) | "
            f"attention {info.attention} | {info.trainable_params:,} trainable of {info.total_params:,} | {guard_note}")

    plan = None
    if fast:
        plan = fast_step.plan_run(recipe, model, info, max(len(e["input_ids"]) for e in examples), device,
                                  budget_bytes)
        layout = "packed rows" if plan.packing else "length-sorted padded micro-batches"
        out.log(f"memory plan: checkpointing {'on' if plan.gradient_checkpointing else 'off'} | {plan.reason} | "
                f"{layout} ({plan.packing_reason}) | kernels {info.kernels} ({info.kernels_reason})")

    params = [p for _, p in lora_parameters(model)]
    optimizer = build_optimizer(recipe, params, device)
    scheduler = build_scheduler(recipe, optimizer)

    step, history = 0, {"loss": [], "lr": [], "tokens": [], "eval_before": None}
    resumed_from = None
    if resume:
        found = ckpt.latest_checkpoint(output_dir)
        if found is None:
            out.log(f"--resume: no complete checkpoint in {output_dir}, starting from step 0")
        else:
            state = ckpt.load_checkpoint(found, model=model, optimizer=optimizer, scheduler=scheduler)
            batcher.load_state_dict(state["batcher"])
            step, history, resumed_from = int(state["step"]), state["history"], str(found)
            out.log(f"resumed from {found} at step {step}")

    eval_kwargs = dict(scoring=recipe.eval.scoring, batch_size=recipe.eval.batch_size, limit=recipe.eval.limit)
    if data.eval and recipe.eval.before_training and history.get("eval_before") is None and dist.main:
        history["eval_before"] = _evaluate(model, tokenizer, data, eval_kwargs, output_dir / "eval-before", out,
                                           "before training")
    dist.barrier()

    train_module: torch.nn.Module = fast_step.AnswerPositionLoss(model) if fast else AnswerLoss(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        train_module = DistributedDataParallel(train_module, device_ids=device_ids)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    from pipeline.batching import collate

    progress = Progress(recipe.train.steps, start_step=step, log_every=recipe.train.log_every, plain=plain,
                        enabled=dist.main)
    model.train()  # gradient checkpointing and dropout only act in train mode
    t_train = time.monotonic()
    tokens_this_run = 0
    start_step = step
    try:
        while step < recipe.train.steps:
            t_step = time.monotonic()
            step_loss, step_tokens = 0.0, 0
            lr = scheduler.get_last_lr()[0]
            if fast:
                step_loss, step_tokens = _fast_micro_steps(recipe, plan, train_module, batcher, examples, tokenizer,
                                                           precision, device, dist)
            for micro in range(recipe.train.grad_accum if not fast else 0):
                indices = next(batcher)
                batch = collate([examples[i] for i in indices], tokenizer.pad_token_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                sync = contextlib.nullcontext()
                if dist.enabled and micro < recipe.train.grad_accum - 1:
                    sync = train_module.no_sync()
                with sync:
                    with autocast(precision, device):
                        loss_sum, count = train_module(**batch)
                    loss = loss_sum / count.clamp(min=1)
                    (loss / recipe.train.grad_accum).backward()
                # Accumulated on the device and counted on the host: no GPU sync per micro-step.
                step_loss = step_loss + loss.detach() / recipe.train.grad_accum
                step_tokens += sum(len(examples[i]["input_ids"]) for i in indices)
            step_loss = float(step_loss)
            if recipe.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, recipe.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            step_loss = dist.mean(step_loss, device)
            step_tokens = int(dist.sum(step_tokens, device))
            tokens_this_run += step_tokens
            history["loss"].append(round(step_loss, 6))
            history["lr"].append(lr)
            history["tokens"].append(step_tokens)
            progress.update(step, step_loss, lr, step_tokens / max(time.monotonic() - t_step, 1e-9))
            if recipe.train.checkpoint_every and step % recipe.train.checkpoint_every == 0 and dist.main:
                ckpt.save_checkpoint(output_dir, step, model=model, optimizer=optimizer, scheduler=scheduler,
                                     batcher_state=batcher.state_dict(), history=history,
                                     keep=recipe.train.keep_checkpoints)
            dist.barrier()
            if on_step is not None:
                on_step(step, step_loss)
    finally:
        progress.close()
    train_seconds = time.monotonic() - t_train

    if dist.main:
        _save_adapter(model, tokenizer, output_dir / "adapter")
    eval_after = None
    if data.eval and dist.main:
        eval_after = _evaluate(model, tokenizer, data, eval_kwargs, output_dir / "eval", out, "after training")
    dist.barrier()

    peak = rep.peak_memory(device)
    losses = history["loss"]
    report: dict[str, Any] = {
        "command": "finetune",
        "status": "completed",
        "started_at": started_at,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quantization_path": info.quantization_path,
        "final_loss": losses[-1] if losses else None,
        "steps": step,
        "metrics": eval_after,
        "recipe": recipe.to_dict(),
        "data": {
            "source": recipe.data.source,
            "files": data.files(),
            "train_rows": len(data.train),
            "eval_rows": len(data.eval),
            "contamination": data.overlap,
            "target": recipe.data.target,
            # Examples at max_length had their prompt's start cut (encode_example keeps the answer whole).
            "examples_at_max_length": sum(1 for e in examples if len(e["input_ids"]) >= recipe.data.max_length),
        },
        "model": info.to_dict(),
        "environment": {"device": rep.device_facts(device), "libraries": rep.library_versions()},
        "training": {
            "steps": step,
            "start_step": start_step,
            "resumed_from": resumed_from,
            "world_size": dist.world_size,
            "precision": precision,
            "optimizer": recipe.train.optimizer,
            "batch_size_per_device": recipe.train.batch_size,
            "grad_accum": recipe.train.grad_accum,
            "memory_plan": plan.to_dict() if plan is not None else None,
            "packing": bool(plan.packing) if plan is not None else False,
            "adapter_gradient_check": guard_note,
            "wall_time_s": round(time.monotonic() - t_start, 1),
            "train_time_s": round(train_seconds, 1),
            # Non-padding tokens (prompt + answer) over all ranks, per second of this process's training loop.
            "tokens_per_second": round(tokens_this_run / train_seconds, 1) if train_seconds > 0 else None,
            "tokens_per_second_per_device": (round(tokens_this_run / train_seconds / dist.world_size, 1)
                                             if train_seconds > 0 else None),
            "peak_memory": peak,
            "final_loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None,
            "mean_loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 6) if losses else None,
            "losses": losses,
            "lrs": history["lr"],
        },
        "eval": ({"scoring": recipe.eval.scoring, "file": str(data.eval_path), "before": history.get("eval_before"),
                  "after": eval_after} if data.eval else None),
    }
    if report["eval"] is not None and not recipe.eval.before_training:
        report["eval"].pop("before")
    if dist.main:
        rep.write_report(output_dir, report)
        out.log(f"report: {output_dir / 'report.json'}")
        if eval_after is not None:
            before = history.get("eval_before")
            out.log(f"accuracy before: {before['accuracy']:.3f}" if before else "accuracy before: (not measured)")
            out.log(f"accuracy after:  {eval_after['accuracy']:.3f}  ({recipe.eval.scoring} scoring, "
                    f"{eval_after.get('count')} questions)")
    return report


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _encode_all(recipe: Recipe, tokenizer: Any, data: Data, dist: Dist):
    from pipeline.batching import LengthGroupedBatches
    from pipeline.prompts import encode_example

    examples = [encode_example(tokenizer, q, recipe.data.target, recipe.data.max_length) for q in data.train]
    # The fast path takes a whole optimizer step's sequences at once and re-cuts them by tokens (pipeline/step.py).
    per_next = recipe.train.batch_size * (recipe.train.grad_accum if recipe.train.micro_batch_tokens is not None else 1)
    batcher = LengthGroupedBatches([len(e["input_ids"]) for e in examples], per_next,
                                   seed=recipe.train.seed, group_by_length=recipe.data.group_by_length,
                                   rank=dist.rank, world_size=dist.world_size)
    return examples, batcher


def _fast_micro_steps(recipe: Recipe, plan, module, batcher, examples: list, tokenizer: Any, precision: str,
                      device: torch.device, dist: Dist) -> tuple[float, int]:
    """One optimizer step's sequences, cut by the memory plan; (mean answer loss, non-padding tokens)."""
    from pipeline.packing import plan_step
    from pipeline.step import accumulate

    chosen = [examples[i] for i in next(batcher)]
    step = plan_step(chosen, tokenizer.pad_token_id, token_budget=plan.token_budget, packing=plan.packing)
    loss = accumulate(module, step, device, autocast=lambda: autocast(precision, device),
                      no_sync=module.no_sync if dist.enabled else None)
    return float(loss), step.real_tokens  # the one host sync of the step


def _probe_batch(recipe: Recipe, examples: list, tokenizer: Any, dist: Dist, device: torch.device):
    """Two examples of this rank's first batch, from a separate batcher so the real one is not advanced."""
    from pipeline.batching import LengthGroupedBatches, collate

    probe = LengthGroupedBatches([len(e["input_ids"]) for e in examples], recipe.train.batch_size,
                                 seed=recipe.train.seed, group_by_length=recipe.data.group_by_length,
                                 rank=dist.rank, world_size=dist.world_size)
    indices = next(probe)[:2]
    batch = collate([examples[i] for i in indices], tokenizer.pad_token_id)
    return {k: v.to(device) for k, v in batch.items()}


def _guard(model: Any, batch: dict, precision: str, device: torch.device, dist: Dist) -> list[str]:
    def loss_fn(m, b):
        with autocast(precision, device):
            return mean_answer_loss(m, b)

    missing = adapters_without_gradient(model, loss_fn, batch)
    # All ranks must take the same decision (fall back or not), whichever rank saw the problem.
    if dist.enabled and dist.sum(float(len(missing)), device) > 0 and not missing:
        missing = ["<another rank's adapters got no gradient>"]
    return missing


def _evaluate(model, tokenizer, data: Data, kwargs: dict, out_dir: Path, progress: Progress, when: str) -> dict:
    from pipeline.evaluate import evaluate, write_eval

    t0 = time.monotonic()
    result = evaluate(model, tokenizer, data.eval, **kwargs)
    write_eval(result, out_dir)
    m = result.metrics
    progress.log(f"eval {when}: accuracy {m['accuracy']:.3f} on {m.get('count')} questions "
                 f"({kwargs['scoring']} scoring, {time.monotonic() - t0:.0f} s) -> {out_dir}")
    return m


def _save_adapter(model: Any, tokenizer: Any, dest: Path) -> None:
    with atomic.folder(dest) as tmp:
        model.save_pretrained(tmp)


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = ["finetune", "load_data", "data_paths", "AnswerLoss"]
