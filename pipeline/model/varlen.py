"""Variable-length attention for packed micro-steps: each sequence attends only to itself, with no mask at all.

Why: with SDPA, a packed row gets a block-diagonal causal mask, and the kernel still walks every (query, key) block
of the row: on packed MedQA rows that is 5.7-9.8x the attention work the sequences need (scripts/bench/
packing_shapes.py), and
cuDNN builds an execution plan for every new masked shape (the outlier steps of a cold run). A variable-length
kernel takes the sequences' boundaries (``cu_seqlens``) instead and computes only within each sequence.

Where it runs: ``torch.nn.attention.varlen.varlen_attn`` (PyTorch >= 2.10, FlashAttention-2 kernels built into
PyTorch, CUDA). The boundaries are computed on the host by ``pipeline.data.packing`` and reach this function through
transformers' ``FlashAttentionKwargs`` (``cu_seq_lens_q``, ``max_length_q``), which every LLaMA layer passes on to
its attention function, so no GPU->host sync is needed to find them.

Fallbacks, stated by ``varlen_unavailable``: older PyTorch, ROCm (PyTorch's varlen path is not documented for ROCm
at the versions we tested; the images' torch 2.3 lacks it) and CPUs use the SDPA block-diagonal path as before.
The CPU reference (``_reference``: one causal SDPA per sequence) exists for the equality tests only.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
import torch.nn.functional as F

NAME = "varlen_packed"
# Attention calls that took the varlen path (boundaries present), so a benchmark can show it was really used.
launches = 0


def varlen_unavailable(device: torch.device) -> Optional[str]:
    """None when PyTorch's variable-length attention can run on ``device``, else why not."""
    if device.type != "cuda":
        return f"device is {device.type}: varlen attention needs a CUDA GPU"
    if getattr(torch.version, "hip", None):
        return "ROCm: torch.nn.attention.varlen is not used there (untested); packed rows keep the SDPA mask"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (needs >= 2.10)"
    try:
        first_launch(device)
    except Exception as exc:  # an API that changed between releases, a kernel missing for this GPU, a wrong result
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "(no message)"
        return f"varlen attention failed its first launch: {type(exc).__name__}: {text}"
    return None


def first_launch(device: torch.device) -> None:
    """Two sequences through varlen_attn (forward and backward) against per-sequence causal SDPA; raises if off."""
    from torch.nn.attention.varlen import varlen_attn

    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(24, 2, 64, generator=g).to(device, torch.bfloat16).requires_grad_() for _ in range(3))
    cu = torch.tensor([0, 9, 24], dtype=torch.int32, device=device)
    out = varlen_attn(q, k, v, cu, cu, 15, 15, **_causal_kwargs())
    out.float().sum().backward()
    ref = _reference(q.detach().float(), k.detach().float(), v.detach().float(), cu, None)
    if not torch.allclose(out.float(), ref, atol=3e-2, rtol=3e-2) or q.grad is None:
        worst = (out.float() - ref).abs().max()
        raise RuntimeError(f"varlen_attn differs from causal SDPA per sequence (max {worst:.2e})")


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: Optional[float]):
    """[T, H, D] per-sequence causal SDPA: what varlen_attn computes, for CPUs and tests."""
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        if b > a:
            o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                               is_causal=True, scale=scale)
            out[a:b] = o.transpose(0, 1)
    return out


_CAUSAL_KW: Optional[dict] = None


def _causal_kwargs() -> dict:
    # torch 2.10/2.11 take is_causal=True; later releases express causality as window_size=(-1, 0).
    global _CAUSAL_KW
    if _CAUSAL_KW is None:
        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        _CAUSAL_KW = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return _CAUSAL_KW


def varlen_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                             scaling: Optional[float] = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: [B, H, T, D] in, [B, T, H, D] out (as ``sdpa_attention_forward``)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # not a packed micro-step (evaluation, padded batches): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    global launches
    launches += 1
    b, h, t, d = query.shape
    if key.shape[1] != h:  # grouped-query attention: repeat the KV heads (LLaMA-2-7B has none)
        key = key.repeat_interleave(h // key.shape[1], dim=1)
        value = value.repeat_interleave(h // value.shape[1], dim=1)
    # The whole micro-step is one stream of tokens: [B, H, T, D] -> [B*T, H, D] (cu_seqlens index that stream).
    q, k, v = (x.transpose(1, 2).reshape(b * t, h, d) for x in (query, key, value))
    if q.device.type == "cuda":
        from torch.nn.attention.varlen import varlen_attn

        max_len = int(kwargs.get("max_length_q") or t)
        out = varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling, **_causal_kwargs())
    else:
        out = _reference(q, k, v, cu, scaling)
    return out.reshape(b, t, h, d), None


def _sdpa_mask(*args: Any, **kwargs: Any) -> Any:
    # The mask SDPA would get (padding, or the block-diagonal mask of packed rows): the mask builder cannot see
    # whether a forward carries cu_seqlens, and a padded batch (evaluation after training) must stay masked.
    # Packed micro-steps with boundaries ignore it in varlen_attention_forward.
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Make ``NAME`` a transformers attention implementation (idempotent); return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, _sdpa_mask)
    return NAME


def use_varlen(model: Any) -> str:
    """Switch a loaded model (peft or not) to varlen attention; return the implementation it had (to restore)."""
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.config._attn_implementation
    set_attention(base, NAME)
    return previous


def set_attention(model: Any, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(name)
            return
        except (ValueError, ImportError, AttributeError):  # older transformers check names against a fixed list
            pass
    model.config._attn_implementation = name


__all__ = ["NAME", "register", "set_attention", "use_varlen", "varlen_attention_forward", "varlen_unavailable"]
