"""``finetune(recipe)``: the whole QLoRA run as one small object whose steps read top to bottom (torchtune style).

    FineTuneRun: prepare_output -> setup_data -> setup_model (load, LoRA, adapter-gradient guard, fallback)
    -> setup_optimizer -> restore_state (--resume) -> evaluate_before -> train (train_step per optimizer step)
    -> save -> evaluate_after -> build_report -> write_report

Our own loop rather than the HF Trainer: the Trainer's reported loss differs between transformers 4.57 and 5.x for
the same rows (a change in how it normalizes), it cannot apply the output layer only at answer positions (halves
the cost of a step on a small model), and a loop this size is easier to audit than the Trainer's callbacks.
Multi-GPU: launch with ``torchrun --nproc-per-node N``; each rank takes ``train.batch_size`` examples per micro-step
(the seed recipe's "batch 8 per GPU"), gradients are averaged by DDP (or the model is sharded by FSDP,
``distributed.strategy``), evaluation is sharded over the ranks, and rank 0 alone writes checkpoints, report and
progress (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from kit import atomic
from pipeline import checkpoint as ckpt
from pipeline import fsdp, preflight, resume_policy, run_lock
from pipeline import report as rep
from pipeline.config import Recipe, RecipeError
from pipeline.distributed import (
    Dist,
    evaluate_sharded,
    rank_rng_states,
    reseed_new_rank,
    setup_distributed,
    shutdown,
)
from pipeline.loss import AnswerLoss, mean_answer_loss
from pipeline.model import (
    AdapterGradientError,
    ModelInfo,
    adapters_without_gradient,
    choose_device,
    load_for_training,
    lora_parameters,
    resolve_model,
)
from pipeline.optim import build_optimizer, build_scheduler, seed_everything
from pipeline.precision import autocast, choose_precision
from pipeline.progress import Progress
from pipeline.prompts import IGNORE_INDEX  # noqa: F401  (kept importable from here for older call sites)
from pipeline.run_record import build_record, write_record

# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    train_path: Optional[Path] = None
    eval_path: Optional[Path] = None
    overlap: int = 0
    # sha256/size of the bytes parsed, by role, taken at load time (pipeline.data.LoadedFile.facts).
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def files(self) -> list[dict[str, Any]]:
        return [self.facts[role] for role in ("train", "eval") if role in self.facts]


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
    from pipeline.data import find_overlap, read_questions

    dist = dist or Dist()

    if dist.main:
        train_path, eval_path = data_paths(recipe)
    dist.barrier()  # rank 0 writes the demo data once; the others read it
    if not dist.main:
        train_path, eval_path = data_paths(recipe, write_demo=False)
    data = Data(train_path=train_path, eval_path=eval_path)
    for role, path in (("train", train_path), ("eval", eval_path)):
        if path is not None:
            loaded = read_questions(path)
            setattr(data, role, loaded.questions)
            data.facts[role], data.warnings = loaded.facts(), data.warnings + loaded.warnings
    if eval_path is not None:
        data.overlap = len(find_overlap(data.train, data.eval))
    return data


# --------------------------------------------------------------------------------------------------------------
# The run


class FineTuneRun:
    """One fine-tune, built from the recipe and the command-line options; ``run()`` calls the steps in order.

    Each step reads and sets attributes on ``self`` (the run's state); a step only uses what earlier steps set.
    """

    # Set by the steps, in this order:
    data: Data  # setup_data
    model: Any  # setup_model (the peft model), with tokenizer, info (ModelInfo), examples, batcher, guard_note
    tokenizer: Any
    info: ModelInfo
    examples: list[dict[str, Any]]
    batcher: Any  # batching.LengthGroupedBatches (imported where used: torch-free modules stay light)
    guard_note: str
    params: list[torch.nn.Parameter]  # setup_optimizer, with optimizer and scheduler
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_module: torch.nn.Module  # train: AnswerLoss, wrapped in DDP under torchrun

    def __init__(self, recipe: Recipe, *, resume: bool = False, overwrite: bool = False,
                 allow_changes: tuple[str, ...] = (), plain: Optional[bool] = None,
                 on_step: Optional[Callable[[int, float], None]] = None):
        self.recipe, self.resume, self.overwrite, self.plain, self.on_step = recipe, resume, overwrite, plain, on_step
        self.allow_changes = allow_changes
        self.run_changes: list[dict[str, Any]] = []  # every recipe/data change made on a resume, with its step
        self.started_at = rep.utc_now()
        self.t_start = time.monotonic()
        self.dist = setup_distributed(recipe.distributed.timeout_minutes)
        self.fsdp = self.dist.enabled and recipe.distributed.strategy == "fsdp"
        self.device = choose_device(recipe.train.device)
        if self.fsdp:
            fsdp.check_recipe(recipe, self.device)
        if recipe.train.optimizer != "adamw" and self.device.type != "cuda":
            build_optimizer(recipe, [], self.device)  # raises the clear error before minutes of loading
        self.precision = choose_precision(recipe, self.device)
        from pipeline import memory_plan

        self.budget_bytes = memory_plan.apply_budget(self.device, recipe.train.memory_budget_gb)
        # train.micro_batch_tokens set: the planned fast path (pipeline/step.py): the step's sequences re-cut by tokens.
        self.fast = recipe.train.micro_batch_tokens is not None
        self.plan: Any = None
        self.output_dir = Path(recipe.train.output_dir)
        self.out = Progress(recipe.train.steps, log_every=recipe.train.log_every, plain=True, enabled=self.dist.main)
        # Evaluation encodes by the BOS rule training used (data.add_bos; lm-eval's rule by default).
        self.eval_kwargs = dict(scoring=recipe.eval.scoring, batch_size=recipe.eval.batch_size,
                                token_budget=recipe.eval.token_budget, limit=recipe.eval.limit,
                                add_bos=recipe.data.add_bos)
        self.step, self.start_step, self.resumed_from = 0, 0, None
        self.history: dict[str, Any] = {"loss": [], "lr": [], "tokens": [], "eval_before": None}
        self.eval_after: Optional[dict] = None
        self.tokens_this_run, self.train_seconds = 0, 0.0

    def run(self) -> dict[str, Any]:
        """The steps in order, holding the output folder (one owner, pipeline/run_lock.py) for the whole run;
        I/O failures the user can fix (full disk, read-only folder) become OutputErrors."""
        try:
            if self.dist.main:
                preflight.check_output_dir(self.output_dir)
            with run_lock.hold(self.output_dir, enabled=self.dist.main) as previous, \
                    preflight.output_errors(self.output_dir):
                if self.dist.main:
                    self._clean_after_killed_runs(previous)
                self.dist.barrier()
                return self._steps()
        finally:
            shutdown(self.dist)  # also after an error: no "destroy_process_group() was not called"

    def _clean_after_killed_runs(self, previous: Any) -> None:
        notes = [f"the previous run ({run_lock.describe(previous)}) ended without releasing it"] if previous else []
        notes += ckpt.clean_orphans(self.output_dir)
        if notes:
            print(f"{self.output_dir}: " + "; ".join(notes), flush=True)

    def _steps(self) -> dict[str, Any]:
        self.prepare_output()
        self.setup_data()
        self.setup_model()
        self.setup_optimizer()
        self.restore_state()
        self.check_space()
        self.evaluate_before()
        self.train()
        self.save()
        self.evaluate_after()
        report = self.build_report()
        self.write_report(report)
        return report

    # ---- setup

    def prepare_output(self) -> None:
        """Output-folder policy: checkpoints already there need --resume (continue) or --overwrite (discard)."""
        existing = ckpt.latest_checkpoint(self.output_dir)
        if existing is None or self.resume:
            return
        if not self.overwrite:
            raise RecipeError(
                f"{self.output_dir} already holds checkpoints ({existing.name}): pass --resume to continue that "
                "run, --overwrite to start again from scratch, or set train.output_dir to another folder"
            )
        if self.dist.main:
            for _, old in ckpt.list_checkpoints(self.output_dir):
                shutil.rmtree(old)
        self.dist.barrier()

    def setup_data(self) -> None:
        seed_everything(self.recipe.train.seed)  # before anything random: model init, dropout, batch order
        self.data = data = load_data(self.recipe, self.dist)
        self.out.log(f"data: {len(data.train)} training questions from {data.train_path}"
                     + (f", {len(data.eval)} evaluation questions from {data.eval_path}" if data.eval_path else ""))
        if data.overlap:
            self.out.log(f"warning: {data.overlap} evaluation questions also occur in the training file "
                         "(contamination)")

    def setup_model(self) -> None:
        """Load the base and its adapters, encode the training set, and check every adapter gets a gradient."""
        if self.dist.main:
            resolve_model(self.recipe.model.name_or_path)  # converts/builds once, before the other ranks look
        self.dist.barrier()
        self.model, self.tokenizer, self.info = load_for_training(self.recipe, self.device)
        self.examples, self.batcher = _encode_all(self.recipe, self.tokenizer, self.data, self.dist)
        if self.dist.main:
            _log_data_warnings(self.recipe, self.model, self.tokenizer, self.data, self.out)
        self._guard_adapters()
        info = self.info
        self.out.log(f"model: {info.resolved_path} | quantization {info.quantization_path} "
                     f"({info.quantization_reason}) | attention {info.attention} | {info.trainable_params:,} "
                     f"trainable of {info.total_params:,} | {self.guard_note}")
        if self.fast:
            self._plan_memory()

    def _plan_memory(self) -> None:
        """Checkpointing and the micro-step token budget from the memory left (pipeline/memory_plan.py)."""
        from pipeline import step as fast_step

        longest = max(len(e["input_ids"]) for e in self.examples)
        self.plan = plan = fast_step.plan_run(self.recipe, self.model, self.info, longest, self.device,
                                              self.budget_bytes)
        layout = "packed rows" if plan.packing else "length-sorted padded micro-batches"
        self.out.log(f"memory plan: checkpointing {'on' if plan.gradient_checkpointing else 'off'} | {plan.reason} | "
                     f"{layout} ({plan.packing_reason}) | kernels {self.info.kernels} ({self.info.kernels_reason})")

    def _guard_adapters(self) -> None:
        """The adapter-gradient guard, before any optimizer step (design: model.adapters_without_gradient).

        On the 4-bit path with ``quantization.on_unsupported: fallback``, adapters without gradient make the run
        reload on an unquantized base and check again; anything still missing then is an error.
        """
        recipe, device = self.recipe, self.device
        probe = _probe_batch(recipe, self.examples, self.tokenizer, self.dist, device)
        missing = self._adapters_missing_gradient(probe)
        if missing and self.info.quantization_path == "nf4" and recipe.quantization.on_unsupported == "fallback":
            reason = (f"adapter-gradient guard: {len(missing)} of {len(lora_parameters(self.model))} LoRA matrices "
                      f"got zero gradient on the 4-bit path (first: {missing[0]})")
            self.out.log(f"falling back to an unquantized base: {reason}")
            del self.model
            _free(device)
            self.model, self.tokenizer, self.info = load_for_training(recipe, device, force_fallback=reason)
            missing = self._adapters_missing_gradient(probe)
        if missing:
            raise AdapterGradientError(
                f"{len(missing)} of {len(lora_parameters(self.model))} LoRA matrices got no gradient on the "
                f"{self.info.quantization_path} path (first: {missing[0]}); training would change nothing. "
                + ("Set quantization.on_unsupported=fallback to train on an unquantized base."
                   if self.info.quantization_path == "nf4" else "Check lora.target_modules and the model.")
            )
        self.guard_note = (f"all {len(lora_parameters(self.model))} LoRA matrices received a non-zero gradient "
                           "before step 1")

    def _adapters_missing_gradient(self, batch: dict) -> list[str]:
        precision, device, dist = self.precision, self.device, self.dist

        def loss_fn(m, b):
            with autocast(precision, device):
                return mean_answer_loss(m, b)

        missing = adapters_without_gradient(self.model, loss_fn, batch)
        # All ranks must take the same decision (fall back or not), whichever rank saw the problem.
        if dist.enabled and dist.sum(float(len(missing)), device) > 0 and not missing:
            missing = ["<another rank's adapters got no gradient>"]
        return missing

    def setup_optimizer(self) -> None:
        # Wrapped before the optimizer is built: FSDP replaces the parameters the optimizer must hold.
        self.train_module = self._wrap_for_training()
        self.params = [p for _, p in lora_parameters(self.model)]
        self.optimizer = build_optimizer(self.recipe, self.params, self.device)
        self.scheduler = build_scheduler(self.recipe, self.optimizer)

    def restore_state(self) -> None:
        """--resume: model, optimizer, schedule, batch order and history from the last complete checkpoint."""
        if not self.resume:
            return
        found = ckpt.latest_checkpoint(self.output_dir)
        if found is None:
            self.out.log(f"--resume: no complete checkpoint in {self.output_dir}, starting from step 0")
            return
        # Checked before anything is restored: the refusal must name the setting, not a shape mismatch.
        self.run_changes, changed = _resume_changes(self.recipe, self.data, found, self.allow_changes, self.out,
                                                    self.dist.world_size)
        state = ckpt.load_checkpoint(found, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                     rank=self.dist.rank)
        self.batcher.load_state_dict(state["batcher"])
        self.step, self.history, self.resumed_from = int(state["step"]), state["history"], str(found)
        if not state["rng_restored"]:  # more ranks than saved the checkpoint
            reseed_new_rank(self.recipe.train.seed, self.step, self.dist)
        if changed & {"train.lr", "train.weight_decay"}:
            resume_policy.apply_to_optimizer(self.optimizer, self.scheduler, self.recipe.train.lr,
                                             self.recipe.train.weight_decay)
        self.out.log(f"resumed from {found} at step {self.step}")

    def check_space(self) -> None:
        """Before step 1: the space the run's checkpoints, adapter and evaluations need, against what is free."""
        if not self.dist.main:
            return
        recipe, params = self.recipe, self.params
        estimate = preflight.estimate_space(
            trainable_params=sum(p.numel() for p in params), param_bytes=max(p.element_size() for p in params),
            optimizer=recipe.train.optimizer, steps=recipe.train.steps, start_step=self.step,
            checkpoint_every=recipe.train.checkpoint_every, keep_checkpoints=recipe.train.keep_checkpoints,
            eval_questions=len(self.data.eval))
        preflight.check_space(self.output_dir, estimate)

    # ---- evaluate, train, save

    def evaluate_before(self) -> None:
        wanted = self.data.eval and self.recipe.eval.before_training and self.history.get("eval_before") is None
        if wanted:
            self.history["eval_before"] = self._evaluate(self.output_dir / "eval-before", "before training")

    def train(self) -> None:
        """The loop: optimizer steps until ``train.steps``, logging, checkpointing and calling ``on_step``."""
        recipe, dist, device = self.recipe, self.dist, self.device
        self.setup_peak_memory = rep.peak_memory(device)  # loading (FSDP: the whole 4-bit model before sharding)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        progress = Progress(recipe.train.steps, start_step=self.step, log_every=recipe.train.log_every,
                            plain=self.plain, enabled=dist.main)
        self.model.train()  # gradient checkpointing and dropout only act in train mode
        t_train = time.monotonic()
        self.start_step = self.step
        try:
            while self.step < recipe.train.steps:
                t_step = time.monotonic()
                lr = self.scheduler.get_last_lr()[0]
                step_loss, step_tokens = self.train_step()
                self.step += 1
                step_loss = dist.mean(step_loss, device)
                step_tokens = int(dist.sum(step_tokens, device))
                self.tokens_this_run += step_tokens
                self.history["loss"].append(round(step_loss, 6))
                self.history["lr"].append(lr)
                self.history["tokens"].append(step_tokens)
                # Per-step duration for the report's throughput curve (checkpoints from before it lack the key).
                self.history.setdefault("seconds", []).append(round(time.monotonic() - t_step, 4))
                progress.update(self.step, step_loss, lr, step_tokens / max(time.monotonic() - t_step, 1e-9))
                self._checkpoint_if_due()
                dist.barrier()
                if self.on_step is not None:
                    self.on_step(self.step, step_loss)
        finally:
            progress.close()
        self.train_seconds = time.monotonic() - t_train

    def _wrap_for_training(self) -> torch.nn.Module:
        from pipeline.step import AnswerPositionLoss

        train_module: torch.nn.Module = AnswerPositionLoss(self.model) if self.fast else AnswerLoss(self.model)
        if self.fsdp:
            d = self.recipe.distributed
            return fsdp.wrap(train_module, self.model, self.device, cpu_offload=d.cpu_offload,
                             use_orig_params=d.use_orig_params)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            train_module = DistributedDataParallel(train_module, device_ids=device_ids)
        return train_module

    def train_step(self) -> tuple[float, int]:
        """One optimizer step: (this rank's mean loss, its non-padding tokens)."""
        recipe = self.recipe
        if self.fast:
            step_loss, step_tokens = self._fast_micro_steps()
        else:
            step_loss, step_tokens = self._micro_steps()
        if recipe.train.max_grad_norm and self.fsdp:
            fsdp.clip_grad_norm(self.train_module, recipe.train.max_grad_norm)
        elif recipe.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, recipe.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return step_loss, step_tokens

    def _fast_micro_steps(self) -> tuple[float, int]:
        """One optimizer step's sequences, cut by the memory plan; (mean answer loss, non-padding tokens)."""
        from pipeline.packing import plan_step
        from pipeline.step import accumulate

        device, module = self.device, self.train_module
        chosen = [self.examples[i] for i in next(self.batcher)]
        step = plan_step(chosen, self.tokenizer.pad_token_id, token_budget=self.plan.token_budget,
                         packing=self.plan.packing)
        loss = accumulate(module, step, device, autocast=lambda: autocast(self.precision, device),
                          no_sync=module.no_sync if self.dist.enabled else None)
        return float(loss), step.real_tokens  # the one host sync of the step

    def _micro_steps(self) -> tuple[float, int]:
        """``grad_accum`` micro-batches of ``batch_size`` sequences, the loss a mean per micro-batch."""
        from pipeline.batching import collate

        recipe, device = self.recipe, self.device
        step_loss: Any = 0.0
        step_tokens = 0
        for micro in range(recipe.train.grad_accum):
            indices = next(self.batcher)
            batch = collate([self.examples[i] for i in indices], self.tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            sync = contextlib.nullcontext()
            if self.dist.enabled and micro < recipe.train.grad_accum - 1:
                sync = self.train_module.no_sync()  # all-reduce gradients once, at the last micro-batch
            with sync:
                with autocast(self.precision, device):
                    loss_sum, count = self.train_module(**batch)
                # Over all ranks' answer tokens: N processes train as one with the same global batch.
                loss = self.dist.token_mean(loss_sum, count)
                (loss / recipe.train.grad_accum).backward()
            # Accumulated on the device and counted on the host: no GPU sync per micro-step.
            step_loss = step_loss + loss.detach() / recipe.train.grad_accum
            step_tokens += sum(len(self.examples[i]["input_ids"]) for i in indices)
        return float(step_loss), step_tokens

    def _checkpoint_if_due(self) -> None:
        every = self.recipe.train.checkpoint_every
        if not every or self.step % every:
            return
        rng_states = rank_rng_states(self.dist)  # collective: every rank's RNG goes into rank 0's checkpoint
        if self.dist.main:
            ckpt.save_checkpoint(self.output_dir, self.step, model=self.model, optimizer=self.optimizer,
                                 scheduler=self.scheduler, batcher_state=self.batcher.state_dict(),
                                 history=self.history, keep=self.recipe.train.keep_checkpoints,
                                 run=resume_policy.run_info(self.recipe.to_dict(), self.data.facts, self.run_changes,
                                                            world_size=self.dist.world_size),
                                 rng_states=rng_states)

    def save(self) -> None:
        record = build_record(self.recipe, self.info)
        if self.fsdp:
            fsdp.save_adapter(self.model, self.output_dir / "adapter", self.dist.main)
            if self.dist.main:
                write_record(self.output_dir / "adapter", record)
        elif self.dist.main:
            _save_adapter(self.model, self.tokenizer, self.output_dir / "adapter", record)
        self.dist.barrier()

    def evaluate_after(self) -> None:
        if self.data.eval:
            self.eval_after = self._evaluate(self.output_dir / "eval", "after training")

    def _evaluate(self, out_dir: Path, when: str) -> Optional[dict]:
        """Sharded over all ranks (each scores its share, rank 0 gathers); rank 0 writes and returns the metrics."""
        from pipeline.evaluate import write_eval

        if self.fsdp:
            # A sharded model needs every rank in every forward pass; ranks scoring different questions would not
            # make the same calls. Evaluate the saved adapter afterwards (docs/distributed.md).
            self.out.log(f"eval {when}: skipped under FSDP; run python -m pipeline evaluate on the saved adapter")
            return None
        t0 = time.monotonic()
        result = evaluate_sharded(self.model, self.tokenizer, self.data.eval, self.dist, **self.eval_kwargs)
        if result is None:  # not rank 0
            return None
        write_eval(result, out_dir)
        m = result.metrics
        self.out.log(f"eval {when}: accuracy {m['accuracy']:.3f} on {m.get('count')} questions "
                     f"({self.eval_kwargs['scoring']} scoring, {time.monotonic() - t0:.0f} s) -> {out_dir}")
        return m

    # ---- report

    def build_report(self) -> dict[str, Any]:
        losses = self.history["loss"]
        final_loss = losses[-1] if losses else None
        return rep.build_report(
            "finetune",
            started_at=self.started_at,
            summary={"status": "completed", "quantization_path": self.info.quantization_path,
                     "final_loss": final_loss, "steps": self.step, "metrics": self.eval_after,
                     "recipe": self.recipe.to_dict()},
            model=self.info.to_dict(),
            device=self.device,
            data=self._data_facts(),
            training=self._training_facts(),
            evaluation=self._eval_facts(),
        )

    def _data_facts(self) -> dict[str, Any]:
        recipe, data = self.recipe, self.data
        return {
            "source": recipe.data.source,
            "files": data.files(),
            "train_rows": len(data.train),
            "eval_rows": len(data.eval),
            "contamination": data.overlap,
            "target": recipe.data.target,
            # Examples at max_length had their prompt's start cut (encode_example keeps the answer whole).
            "examples_at_max_length": sum(1 for e in self.examples if len(e["input_ids"]) >= recipe.data.max_length),
        }

    def _training_facts(self) -> dict[str, Any]:
        t, losses, seconds = self.recipe.train, self.history["loss"], self.train_seconds
        return {
            "steps": self.step,
            "start_step": self.start_step,
            "resumed_from": self.resumed_from,
            # What --resume changed against the checkpoints' recipe/data, and from which step (resume_policy).
            "changes_on_resume": self.run_changes,
            "world_size": self.dist.world_size,
            "distributed": {**self.dist.facts(), "strategy": self.recipe.distributed.strategy if self.dist.enabled
                            else None, "timeout_minutes": self.recipe.distributed.timeout_minutes},
            "precision": self.precision,
            "optimizer": t.optimizer,
            "batch_size_per_device": t.batch_size,
            "grad_accum": t.grad_accum,
            "memory_plan": self.plan.to_dict() if self.plan is not None else None,
            "packing": bool(self.plan.packing) if self.plan is not None else False,
            "adapter_gradient_check": self.guard_note,
            "wall_time_s": round(time.monotonic() - self.t_start, 1),
            "train_time_s": round(seconds, 1),
            # Non-padding tokens (prompt + answer) over all ranks, per second of this process's training loop.
            "tokens_per_second": round(self.tokens_this_run / seconds, 1) if seconds > 0 else None,
            "tokens_per_second_per_device": (round(self.tokens_this_run / seconds / self.dist.world_size, 1)
                                             if seconds > 0 else None),
            "peak_memory": rep.peak_memory(self.device),
            # Collective (build_report runs on every rank): each rank's training peak, and its peak while loading.
            "peak_memory_per_rank": self.dist.gather_objects(rep.peak_memory(self.device)),
            "setup_peak_memory_per_rank": self.dist.gather_objects(getattr(self, "setup_peak_memory", None)),
            "final_loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None,
            "mean_loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 6) if losses else None,
            "losses": losses,
            "lrs": self.history["lr"],
            # Per-step tokens (all ranks) and seconds, for the throughput curve and the TensorBoard log.
            "step_tokens": self.history["tokens"],
            "tokens_per_step": self.history["tokens"],  # the name scripts/gpu/dist_table.py and the DDP tests read
            "step_seconds": self.history.get("seconds", []),
        }

    def _eval_facts(self) -> Optional[dict[str, Any]]:
        if not self.data.eval:
            return None
        facts = {"scoring": self.recipe.eval.scoring, "add_bos": self.recipe.data.add_bos,
                 "file": str(self.data.eval_path),
                 "before": self.history.get("eval_before"), "after": self.eval_after}
        if not self.recipe.eval.before_training:
            facts.pop("before")
        return facts

    def write_report(self, report: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        rep.write_report(self.output_dir, report)
        self.out.log(f"report: {self.output_dir / 'report.json'}")
        if self.eval_after is not None:
            before = self.history.get("eval_before")
            self.out.log(f"accuracy before: {before['accuracy']:.3f}" if before else "accuracy before: (not measured)")
            self.out.log(f"accuracy after:  {self.eval_after['accuracy']:.3f}  ({self.recipe.eval.scoring} scoring, "
                         f"{self.eval_after.get('count')} questions)")


def finetune(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: tuple[str, ...] = (),
    plain: Optional[bool] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> dict[str, Any]:
    """Train a LoRA adapter as the recipe says; return the report dict (also written to ``output_dir``).

    ``allow_changes``: recipe keys ``--resume`` may change although they alter the optimization
    (pipeline/resume_policy.py). ``on_step(step, loss)`` is called after every optimizer step (tests use it).
    """
    return FineTuneRun(recipe, resume=resume, overwrite=overwrite, allow_changes=allow_changes, plain=plain,
                       on_step=on_step).run()


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _encode_all(recipe: Recipe, tokenizer: Any, data: Data, dist: Dist):
    from pipeline.batching import LengthGroupedBatches
    from pipeline.prompts import encode_example

    examples = [encode_example(tokenizer, q, recipe.data.target, recipe.data.max_length, recipe.data.add_bos)
                for q in data.train]
    # The fast path takes a whole optimizer step's sequences at once and re-cuts them by tokens (pipeline/step.py).
    per_next = recipe.train.batch_size * (recipe.train.grad_accum if recipe.train.micro_batch_tokens is not None else 1)
    batcher = LengthGroupedBatches([len(e["input_ids"]) for e in examples], per_next,
                                   seed=recipe.train.seed, group_by_length=recipe.data.group_by_length,
                                   rank=dist.rank, world_size=dist.world_size)
    return examples, batcher


def _probe_batch(recipe: Recipe, examples: list, tokenizer: Any, dist: Dist, device: torch.device):
    """Two examples of this rank's first batch, from a separate batcher so the real one is not advanced."""
    from pipeline.batching import LengthGroupedBatches, collate

    probe = LengthGroupedBatches([len(e["input_ids"]) for e in examples], recipe.train.batch_size,
                                 seed=recipe.train.seed, group_by_length=recipe.data.group_by_length,
                                 rank=dist.rank, world_size=dist.world_size)
    indices = next(probe)[:2]
    batch = collate([examples[i] for i in indices], tokenizer.pad_token_id)
    return {k: v.to(device) for k, v in batch.items()}


def _save_adapter(model: Any, tokenizer: Any, dest: Path, record: dict[str, Any]) -> None:
    with atomic.folder(dest, expected_bytes=ckpt.trainable_bytes(model)) as tmp:
        model.save_pretrained(tmp)
        write_record(tmp, record)  # how the base was loaded: evaluate --adapter reloads it the same way


def _resume_changes(recipe: Recipe, data: Data, found: Path, allow_changes: tuple[str, ...],
                    out: Progress, world_size: int = 1) -> tuple[list[dict[str, Any]], set[str]]:
    """Refuse optimization changes against the checkpoint unless allowed; return (all changes so far as
    records, the keys changed now)."""
    resume_policy.check_allowed_keys(allow_changes, recipe.to_dict())
    stored = ckpt.read_run_info(found)
    if stored is None:
        out.log(f"warning: {found} predates stored recipes; cannot check this resume's settings against it")
        return [], set()
    step = int(ckpt.read_state(found)["step"])
    changes = resume_policy.compare(stored, recipe.to_dict(), data.facts, step=step, allowed=allow_changes,
                                    world_size=world_size)
    resume_policy.enforce(changes, str(found))
    for change in changes:
        out.log(f"resume: {change.describe()} ({change.kind}, from step {step})")
    return list(stored.get("changes", [])) + resume_policy.as_records(changes), {c.key for c in changes}


def _log_data_warnings(recipe: Recipe, model: Any, tokenizer: Any, data: Data, out: Progress) -> None:
    """Repeated questions, and rows that will be cut (file:line, how much) in the train and eval files."""
    from pipeline import lengths

    rows = lengths.train_rows_over(data.train, tokenizer, recipe.data.target, recipe.data.max_length)
    if data.eval:  # evaluate() bounds prompt + choice by the model's context, as lm-eval does
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
        rows += lengths.eval_rows_over(data.eval, tokenizer, recipe.eval.scoring, context)
    for message in lengths.summarize(data.warnings) + lengths.summarize([f"warning: {m}" for m in rows]):
        out.log(message)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = ["finetune", "FineTuneRun", "load_data", "data_paths", "AnswerLoss", "mean_answer_loss", "Dist",
           "setup_distributed"]
