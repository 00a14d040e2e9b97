"""One optimizer step's forward/backward over planned micro-batches, with no host synchronization inside.

The loss of a step is the mean cross-entropy over the answer tokens of all its sequences, whatever the cut into
micro-batches: each micro-batch's summed loss is divided by the step's answer-token count (known on the host
from the labels) before backward, so one micro-step of 32 sequences and four of 8 give the same gradient. The
loss is accumulated on the device and read once per optimizer step by the caller.

Host synchronizations avoided (each one drains the GPU's queue, and a 7B step has thousands of small launches):
no ``.item()`` per micro-step, no ``int(mask.sum())`` token counts (the host already knows them), no boolean
indexing (``hidden[mask]`` must ask the GPU how many rows it selects): the answer positions are a precomputed
index tensor.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from pipeline.data.packing import StepBatches


class AnswerPositionLoss(torch.nn.Module):
    """Summed cross-entropy of the output layer applied only at the given flat positions.

    Wraps the (peft) model's decoder and head, so DDP can wrap this module as it wraps ``train.AnswerLoss``.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        answer_index: torch.Tensor,
        answer_target: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        **attention: Any,
    ) -> torch.Tensor:
        # ``attention``: the packed micro-step's sequence boundaries (cu_seq_lens_q/k, max_length_q/k) for
        # variable-length attention; transformers hands them to every layer's attention function.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False, **attention)[0]
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, answer_index)
        logits = base.get_output_embeddings()(picked).float()
        return F.cross_entropy(logits, answer_target, reduction="sum")


def accumulate(
    module: torch.nn.Module,
    step: StepBatches,
    device: torch.device,
    *,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    no_sync: Optional[Callable[[], Any]] = None,
) -> torch.Tensor:
    """Forward and backward every micro-batch of ``step``; return the step's mean answer loss (on the device).

    ``no_sync`` (DDP's ``module.no_sync``) is entered for all but the last micro-batch, so gradients are
    all-reduced once per optimizer step.
    """
    count = max(1, step.answer_tokens)
    total = torch.zeros((), device=device, dtype=torch.float32)
    last = len(step.micro) - 1
    for i, micro in enumerate(step.micro):
        inputs = micro.inputs(device)
        sync = no_sync() if (no_sync is not None and i < last) else contextlib.nullcontext()
        with sync:
            with autocast():
                loss_sum = module(**inputs)
            (loss_sum / count).backward()
        total += loss_sum.detach()
    return total / count


def warm_up(module: torch.nn.Module, steps: list[StepBatches], device: torch.device, params: list,
            *, autocast: Callable[[], Any] = contextlib.nullcontext) -> int:
    """One forward/backward per distinct micro-step shape among ``steps``, before step 1; gradients dropped.

    Each new shape pays for kernel plans (cuDNN attention) and Triton specializations the first time it runs;
    paying it here keeps the timed steps steady and tells how many shapes a run meets. Returns that count.
    """
    seen: dict[tuple, Any] = {}
    for step in steps:
        for micro in step.micro:
            seen.setdefault(tuple(micro.input_ids.shape), micro)
    for micro in seen.values():
        with autocast():
            loss = module(**micro.inputs(device))
        (loss * 0.0).backward()
    for p in params:
        p.grad = None
    return len(seen)


def plan_run(recipe: Any, model: Any, info: Any, longest: int, device: torch.device, budget_bytes: Optional[int]):
    """The memory plan for this run (after the model is loaded), with checkpointing switched on if it says so."""
    from pipeline.model.load import enable_checkpointing
    from pipeline.train.memory_plan import free_bytes, plan_memory

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    plan = plan_memory(base.config, free=free_bytes(device, budget_bytes), longest=longest,
                       checkpointing=recipe.model.gradient_checkpointing,
                       token_budget=recipe.train.micro_batch_tokens, fused_swiglu=info.kernels == "liger")
    if plan.gradient_checkpointing and not info.gradient_checkpointing:
        info.gradient_checkpointing = enable_checkpointing(model)
    if recipe.data.packing:
        from pipeline.data.packing import packing_unsupported

        why_not = packing_unsupported(info.attention)
        plan.packing = why_not is None
        plan.packing_reason = "data.packing: rows of sequences end to end" if why_not is None else (
            f"data.packing falls back to padded micro-batches: {why_not}")
    else:
        plan.packing_reason = "data.packing is false"
    _plan_rows(recipe, model, plan, device)
    return plan


def _plan_rows(recipe: Any, model: Any, plan: Any, device: torch.device) -> None:
    """Packed rows: variable-length attention where it runs (one row per micro-step, no mask), else balanced rows
    rounded to ``data.pack_round_to`` (shapes repeat: fewer first-time kernel plans)."""
    if not plan.packing:
        return
    plan.balance = bool(recipe.data.pack_balance)
    plan.round_to = int(recipe.data.pack_round_to)
    mode = recipe.model.varlen_attention
    if mode is False:
        plan.varlen_reason = "model.varlen_attention is false"
        return
    from pipeline.model.varlen import use_varlen, varlen_unavailable

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if str(getattr(base.config, "_attn_implementation", "")).startswith("flash_attention"):
        # transformers' FlashAttention path already turns restarting position ids into variable-length attention
        plan.varlen_reason = "flash_attention_2 runs packed rows as variable-length attention itself"
        return
    why_not = varlen_unavailable(device)
    if why_not is not None:
        if mode is True:
            from pipeline.core.errors import UnsupportedError

            raise UnsupportedError(f"model.varlen_attention is true but it cannot run here: {why_not}")
        plan.varlen_reason = f"auto: {why_not}; packed rows use the SDPA block-diagonal mask"
        return
    use_varlen(model)
    plan.varlen = True
    plan.varlen_reason = "torch.nn.attention.varlen: one row per micro-step, attention within each sequence only"


__all__ = ["AnswerPositionLoss", "accumulate", "plan_run", "warm_up"]
