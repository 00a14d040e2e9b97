"""``finetune(recipe)``: the QLoRA recipe as its phases in order (torchtune style); each phase calls its stage.

    prepare_output -> setup_data (pipeline/data) -> setup_model (pipeline/model, the guard in pipeline/train)
    -> setup_training (pipeline/train/loop.py) -> restore_state (--resume) -> check_space -> evaluate_before
    (pipeline/evaluate) -> train -> save -> evaluate_after -> build_report -> write_report (pipeline/report)

Multi-GPU: launch with ``torchrun --nproc-per-node N``; each rank takes ``train.batch_size`` examples per micro-step
(the seed recipe's "batch 8 per GPU"), gradients are averaged by DDP (or the model is sharded by FSDP,
``distributed.strategy``), evaluation is sharded over the ranks, and rank 0 alone writes checkpoints, report and
progress (docs/distributed.md).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.core import preflight, run_lock
from pipeline.core.config import Recipe, RecipeError
from pipeline.core.run_record import build_record
from pipeline.data.loading import Data, data_paths, data_warnings, encode_training_set, probe_batch, read_data
from pipeline.evaluate.scoring import write_eval
from pipeline.evaluate.sharded import evaluate_sharded
from pipeline.model.load import ModelInfo, choose_device, load_for_training, resolve_model
from pipeline.model.precision import choose_precision
from pipeline.report import build as rep
from pipeline.report.run_facts import data_facts, eval_facts, training_facts
from pipeline.train import checkpoint as ckpt
from pipeline.train import fsdp, memory_plan, resume_policy
from pipeline.train.distributed import Dist, lost_ranks_error, setup_distributed, shutdown
from pipeline.train.guard import guard_adapters
from pipeline.train.loop import LoopState, Trainer, checkpoint_if_due, train_loop
from pipeline.train.optim import build_optimizer, seed_everything
from pipeline.train.progress import Progress
from pipeline.train.resume import restore
from pipeline.train.step import plan_run


class FineTuneRun:
    """One fine-tune, built from the recipe and the command-line options; ``run()`` calls the phases in order.

    Each phase reads and sets attributes on ``self`` (the run's state); a phase only uses what earlier ones set.
    """

    data: Data  # setup_data
    model: Any  # setup_model: the peft model, its tokenizer, ModelInfo, the encoded examples and their batcher
    tokenizer: Any
    info: ModelInfo
    examples: list[dict[str, Any]]
    batcher: Any
    guard_note: str
    trainer: Trainer  # setup_training: the loss module (DDP/FSDP), optimizer, schedule

    def __init__(self, recipe: Recipe, *, resume: bool = False, overwrite: bool = False,
                 allow_changes: tuple[str, ...] = (), plain: Optional[bool] = None,
                 on_step: Optional[Callable[[int, float], None]] = None):
        self.recipe, self.resume, self.overwrite, self.plain, self.on_step = recipe, resume, overwrite, plain, on_step
        self.allow_changes = allow_changes
        self.run_changes: list[dict[str, Any]] = []  # every recipe/data change made on a resume, with its step
        self.resumed_from: Optional[str] = None
        self.started_at, self.t_start = rep.utc_now(), time.monotonic()
        self.dist = setup_distributed(recipe.distributed.timeout_minutes,
                                      group_of_one=recipe.distributed.strategy == "fsdp")
        self.fsdp = self.dist.enabled and recipe.distributed.strategy == "fsdp"
        self.device = choose_device(recipe.train.device)
        if self.fsdp:
            fsdp.check_recipe(recipe, self.device)
        if recipe.train.optimizer != "adamw" and self.device.type != "cuda":
            build_optimizer(recipe, [], self.device)  # raises the clear error before minutes of loading
        self.precision = choose_precision(recipe, self.device)
        self.budget_bytes = memory_plan.apply_budget(self.device, recipe.train.memory_budget_gb)
        self.plan: Any = None  # train.micro_batch_tokens set: the planned path (pipeline/train/step.py)
        self.output_dir = Path(recipe.train.output_dir)
        self.out = Progress(recipe.train.steps, log_every=recipe.train.log_every, plain=True, enabled=self.dist.main)
        # Evaluation encodes by the BOS rule training used (data.add_bos; lm-eval's rule by default).
        self.eval_kwargs = dict(scoring=recipe.eval.scoring, batch_size=recipe.eval.batch_size,
                                token_budget=recipe.eval.token_budget, limit=recipe.eval.limit,
                                add_bos=recipe.data.add_bos)
        self.state = LoopState()
        self.eval_after: Optional[dict] = None
        self.setup_peak_memory: Optional[dict] = None

    def run(self) -> dict[str, Any]:
        """The phases in order, holding the output folder (one owner, pipeline/core/run_lock.py) for the whole
        run; I/O failures the user can fix (full disk, read-only folder) become OutputErrors."""
        try:
            if self.dist.main:
                preflight.check_output_dir(self.output_dir)
            with run_lock.hold(self.output_dir, enabled=self.dist.main) as previous, \
                    preflight.output_errors(self.output_dir):
                if self.dist.main:
                    self._clean_after_killed_runs(previous)
                self.dist.barrier()
                return self._phases()
        except Exception as exc:
            # A node that died mid-step: name the lost ranks and the checkpoint to resume from, not a gloo trace.
            lost = lost_ranks_error(exc, self.dist, step=self.state.step, output_dir=self.output_dir,
                                    last_checkpoint=ckpt.latest_checkpoint(self.output_dir))
            if lost is None:
                raise
            raise lost from exc
        finally:
            shutdown(self.dist)  # also after an error: no "destroy_process_group() was not called"

    def _clean_after_killed_runs(self, previous: Any) -> None:
        notes = [f"the previous run ({run_lock.describe(previous)}) ended without releasing it"] if previous else []
        notes += ckpt.clean_orphans(self.output_dir)
        if notes:
            print(f"{self.output_dir}: " + "; ".join(notes), flush=True)

    def _phases(self) -> dict[str, Any]:
        self.prepare_output()
        self.setup_data()
        self.setup_model()
        self.setup_training()
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
        recipe, dist = self.recipe, self.dist
        if dist.main:
            resolve_model(recipe.model.name_or_path)  # converts/builds once, before the other ranks look
        dist.barrier()
        loaded = load_for_training(recipe, self.device)
        self.examples, self.batcher = encode_training_set(recipe, loaded[1], self.data.train, rank=dist.rank,
                                                          world_size=dist.world_size)
        if dist.main:
            full = self.output_dir / "data-warnings.txt"
            for message in data_warnings(recipe, loaded[0], loaded[1], self.data, full_list=full):
                self.out.log(message)
        probe = probe_batch(recipe, self.examples, loaded[1].pad_token_id, self.device, rank=dist.rank,
                            world_size=dist.world_size)
        self.model, self.tokenizer, self.info, self.guard_note = guard_adapters(
            recipe, loaded, probe, precision=self.precision, device=self.device, dist=dist, log=self.out.log)
        info = self.info
        self.out.log(f"model: {info.resolved_path} | quantization {info.quantization_path} "
                     f"({info.quantization_reason}) | attention {info.attention} | {info.trainable_params:,} "
                     f"trainable of {info.total_params:,} | {self.guard_note}")
        if recipe.train.micro_batch_tokens is not None:
            self._plan_memory()

    def _plan_memory(self) -> None:
        """Checkpointing and the micro-step token budget from the memory left (pipeline/train/memory_plan.py)."""
        longest = max(len(e["input_ids"]) for e in self.examples)
        self.plan = plan = plan_run(self.recipe, self.model, self.info, longest, self.device, self.budget_bytes)
        layout = "packed rows" if plan.packing else "length-sorted padded micro-batches"
        self.out.log(f"memory plan: checkpointing {'on' if plan.gradient_checkpointing else 'off'} | {plan.reason} | "
                     f"{layout} ({plan.packing_reason}) | kernels {self.info.kernels} ({self.info.kernels_reason})")

    def setup_training(self) -> None:
        self.trainer = Trainer(self.recipe, self.model, examples=self.examples, batcher=self.batcher,
                               pad_id=self.tokenizer.pad_token_id, dist=self.dist, device=self.device,
                               precision=self.precision, plan=self.plan, use_fsdp=self.fsdp)

    def restore_state(self) -> None:
        """--resume: model, optimizer, schedule, batch order and history from the last complete checkpoint."""
        if self.resume:
            self.run_changes, self.resumed_from = restore(self.trainer, self.state, self.output_dir,
                                                          data_facts=self.data.facts,
                                                          allow_changes=self.allow_changes, log=self.out.log)

    def check_space(self) -> None:
        """Before step 1: the space the run's checkpoints, adapter and evaluations need, against what is free."""
        if not self.dist.main:
            return
        recipe, params = self.recipe, self.trainer.params
        estimate = preflight.estimate_space(
            trainable_params=sum(p.numel() for p in params), param_bytes=max(p.element_size() for p in params),
            optimizer=recipe.train.optimizer, steps=recipe.train.steps, start_step=self.state.step,
            checkpoint_every=recipe.train.checkpoint_every, keep_checkpoints=recipe.train.keep_checkpoints,
            eval_questions=len(self.data.eval))
        preflight.check_space(self.output_dir, estimate)

    # ---- evaluate, train, save

    def evaluate_before(self) -> None:
        history = self.state.history
        if self.data.eval and self.recipe.eval.before_training and history.get("eval_before") is None:
            history["eval_before"] = self._evaluate(self.output_dir / "eval-before", "before training")

    def train(self) -> None:
        """The loop (pipeline/train/loop.py): optimizer steps until ``train.steps``, checkpoints, ``on_step``."""
        self.setup_peak_memory = rep.peak_memory(self.device)  # loading (FSDP: the whole 4-bit model first)
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

        def after_step() -> None:
            run = resume_policy.run_info(self.recipe.to_dict(), self.data.facts, self.run_changes,
                                         world_size=self.dist.world_size)
            # FSDP: every rank takes part in gathering the adapter and optimizer state (pipeline/train/fsdp.py).
            (fsdp.checkpoint_if_due if self.fsdp else checkpoint_if_due)(self.trainer, self.state, self.output_dir,
                                                                         run)

        train_loop(self.trainer, self.state, plain=self.plain, after_step=after_step, on_step=self.on_step)

    def save(self) -> None:
        # FSDP: every rank takes part in gathering the sharded adapter; rank 0 writes it.
        gathered = fsdp.gather_adapter(self.model) if self.fsdp else None
        ckpt.save_adapter(self.model, self.tokenizer, self.output_dir / "adapter", build_record(self.recipe, self.info),
                          adapter_state=gathered, main=self.dist.main)
        self.dist.barrier()

    def evaluate_after(self) -> None:
        if self.data.eval:
            self.eval_after = self._evaluate(self.output_dir / "eval", "after training")

    def _evaluate(self, out_dir: Path, when: str) -> Optional[dict]:
        """Sharded over all ranks (each scores its share, rank 0 gathers); rank 0 writes and returns the metrics."""
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
        losses = self.state.history["loss"]
        training = training_facts(self.recipe, self.state, dist=self.dist, device=self.device,
                                  precision=self.precision, plan=self.plan, guard_note=self.guard_note,
                                  resumed_from=self.resumed_from, run_changes=self.run_changes,
                                  t_start=self.t_start, setup_peak=self.setup_peak_memory)
        return rep.build_report(
            "finetune",
            started_at=self.started_at,
            summary={"status": "completed", "quantization_path": self.info.quantization_path,
                     "final_loss": losses[-1] if losses else None, "steps": self.state.step,
                     "metrics": self.eval_after, "recipe": self.recipe.to_dict()},
            model=self.info.to_dict(),
            device=self.device,
            data=data_facts(self.recipe, self.data, self.examples),
            training=training,
            evaluation=eval_facts(self.recipe, self.data, self.state.history.get("eval_before"), self.eval_after),
        )

    def write_report(self, report: dict[str, Any]) -> None:
        if not self.dist.main:
            return
        rep.write_report(self.output_dir, report)
        self.out.log(f"report: {self.output_dir / 'report.json'}")
        if self.eval_after is not None:
            before = self.state.history.get("eval_before")
            self.out.log(f"accuracy before: {before['accuracy']:.3f}" if before else "accuracy before: (not measured)")
            self.out.log(f"accuracy after:  {self.eval_after['accuracy']:.3f}  ({self.recipe.eval.scoring} scoring, "
                         f"{self.eval_after.get('count')} questions)")


def load_data(recipe: Recipe, dist: Optional[Dist] = None) -> Data:
    """The recipe's data on every rank: rank 0 writes the demo data once, the others read it."""
    dist = dist or Dist()
    if dist.main:
        paths = data_paths(recipe)
    dist.barrier()
    if not dist.main:
        paths = data_paths(recipe, write_demo=False)
    return read_data(*paths)


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
    (pipeline/train/resume_policy.py). ``on_step(step, loss)`` is called after every optimizer step (tests use it).
    """
    return FineTuneRun(recipe, resume=resume, overwrite=overwrite, allow_changes=allow_changes, plain=plain,
                       on_step=on_step).run()
