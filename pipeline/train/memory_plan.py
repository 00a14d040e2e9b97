"""How many tokens one micro-step may hold, and whether activations must be checkpointed, from free memory.

Training memory of a QLoRA step is the frozen 4-bit base and the adapters (fixed, already on the device when
the plan is made) plus activations saved for backward, which grow with the tokens in the micro-step. The plan
estimates activation bytes per token from the model's shape, with and without checkpointing, and picks:

- checkpointing off whenever a micro-step of at least ``MIN_USEFUL_TOKENS`` (and the longest sequence) fits
  without it: recomputing the forward costs about half a step (the frozen base needs no weight gradients, so
  backward is about one forward), far more than running the step's sequences in two micro-steps instead of one;
- the largest token budget that fits, capped at ``MAX_TOKENS`` (beyond it matmuls are already efficient and
  the memory is better left free).

The per-token estimate is deliberately simple (what PyTorch saves for backward in a LLaMA block with LoRA on all
seven projections, in 16-bit) times ``SAFETY`` for the allocator; ``scripts/bench/train_throughput.py`` prints
the measured bytes per token next to it so the constants can be checked on any GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import torch

GIB = 1024**3
MIN_USEFUL_TOKENS = 2048
MAX_TOKENS = 16384
SAFETY = 1.3
RESERVE_BYTES = 2 * GIB  # optimizer state growth, cuBLAS workspaces, the answer-position logits


@dataclass
class MemoryPlan:
    gradient_checkpointing: bool
    token_budget: int
    free_bytes: int
    bytes_per_token: int
    reason: str
    packing: bool = False  # set by pipeline.train.step.plan_run: data.packing, where packed rows stay apart
    packing_reason: str = ""
    varlen: bool = False  # set by plan_run: packed micro-steps as one row for variable-length attention
    varlen_reason: str = ""
    balance: bool = False  # packed rows evened out within a micro-step (data.pack_balance)
    round_to: int = 1  # packed widths rounded up to this multiple (data.pack_round_to)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def activation_bytes_per_token(config: Any, *, checkpointing: bool, fused_swiglu: bool = False) -> int:
    """Estimated bytes saved for backward per token (16-bit activations, LoRA with dropout on 7 projections).

    Per layer without checkpointing, in units of 2 bytes: ~15 hidden-sized tensors (norm inputs/outputs, q/k/v,
    rotary outputs, attention output, residuals, dropout copies of the inputs of LoRA-wrapped projections) and ~5
    ffn-sized ones (gate, up, silu(gate), their product, the dropout copy in front of down_proj) plus 1-byte
    dropout masks. A fused SwiGLU keeps gate and up only. With checkpointing only each layer's input stays, and
    one layer is rebuilt at a time. Calibrated on one H200 (LLaMA-2-7B shape, NF4, r 64 on 7 projections, packed
    MedQA rows): measured 7.6 MiB per token without fused kernels and 6.4 with them (docs/benchmarks.md), against
    7.4 and 6.1 from this formula; ``SAFETY`` covers the rest.
    """
    h = int(config.hidden_size)
    ffn = int(getattr(config, "intermediate_size", 4 * h))
    layers = int(config.num_hidden_layers)
    per_layer = 2 * 15 * h + (2 * (3 if fused_swiglu else 5) + 1) * ffn
    if checkpointing:
        return 2 * h * layers + per_layer
    return per_layer * layers


def free_bytes(device: torch.device, budget_bytes: Optional[int] = None) -> int:
    """Bytes this process may still allocate on ``device``: free memory, or what is left of ``budget_bytes``."""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    if budget_bytes is not None:
        # memory_reserved, not allocated: the caching allocator's reserve counts against the per-process cap.
        free = min(free, budget_bytes - torch.cuda.memory_reserved(device))
    return max(0, int(free))


def plan_memory(
    config: Any,
    *,
    free: int,
    longest: int,
    checkpointing: Union[bool, str] = "auto",
    token_budget: Union[int, str] = "auto",
    fused_swiglu: bool = False,
) -> MemoryPlan:
    """Choose checkpointing and the micro-step token budget (see the module docstring for the rules).

    ``free`` 0 means "unknown" (a CPU): no checkpointing, and one micro-step of ``MIN_USEFUL_TOKENS`` or the
    longest sequence, as the caller's explicit settings allow.
    """
    fixed_budget = token_budget if isinstance(token_budget, int) else None
    if fixed_budget is not None and fixed_budget < longest:
        raise ValueError(f"train.micro_batch_tokens is {fixed_budget} but the longest training sequence has "
                         f"{longest} tokens: expected at least {longest}, or auto")
    per_token = {ckpt: int(SAFETY * activation_bytes_per_token(config, checkpointing=ckpt, fused_swiglu=fused_swiglu))
                 for ckpt in (False, True)}
    usable = max(0, free - RESERVE_BYTES)
    fits = {ckpt: usable // per_token[ckpt] for ckpt in (False, True)}
    if free <= 0:
        ckpt = checkpointing if isinstance(checkpointing, bool) else False
        budget = fixed_budget or max(MIN_USEFUL_TOKENS, longest)
        return MemoryPlan(ckpt, budget, 0, per_token[ckpt], "no GPU memory figure (CPU): no plan from memory")
    if isinstance(checkpointing, bool):
        ckpt, why = checkpointing, f"model.gradient_checkpointing is {str(checkpointing).lower()}"
    elif fits[False] >= max(MIN_USEFUL_TOKENS, longest, fixed_budget or 0):
        ckpt, why = False, f"auto: {fits[False]} tokens fit without checkpointing"
    else:
        ckpt, why = True, f"auto: only {fits[False]} tokens fit without checkpointing"
    budget = fixed_budget or int(min(MAX_TOKENS, fits[ckpt]))
    if budget < longest:
        raise MemoryError(
            f"memory plan: {free / GIB:.1f} GiB free holds about {fits[ckpt]} tokens per micro-step "
            f"({'with' if ckpt else 'without'} checkpointing), fewer than the longest sequence ({longest}); "
            "lower data.max_length, enable model.gradient_checkpointing, or free GPU memory"
        )
    return MemoryPlan(ckpt, budget, free, per_token[ckpt],
                      f"{why}; micro-steps of up to {budget} tokens ({free / GIB:.1f} GiB free, "
                      f"~{per_token[ckpt] / 2**20:.2f} MiB per token)")




def apply_budget(device: torch.device, budget_gb: Optional[float]) -> Optional[int]:
    """Cap this process's GPU memory at ``budget_gb`` GiB (``train.memory_budget_gb``); the cap in bytes, or None.

    The cap is enforced by PyTorch's caching allocator (an allocation beyond it raises out-of-memory), so a plan
    made for a 64 GB MI250 GCD is really tested on a larger card, not just computed.
    """
    if budget_gb is None or device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    budget = int(budget_gb * GIB)
    if budget < total:
        torch.cuda.set_per_process_memory_fraction(budget / total, device)
    return min(budget, total)


__all__ = ["MemoryPlan", "plan_memory", "activation_bytes_per_token", "free_bytes", "apply_budget"]
