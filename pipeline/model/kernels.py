"""Fused Triton kernels for the LLaMA block (RMSNorm, SwiGLU, RoPE) from liger-kernel, or a stated fallback.

Why liger-kernel rather than our own: it is a maintained library of exactly these kernels, written in Triton, so
the same code runs on NVIDIA (CUDA) and on AMD Instinct GPUs (Triton's ROCm backend; liger-kernel documents AMD
support). The fused kernels cut memory traffic and the activations kept for backward (the SwiGLU kernel keeps
gate and up only and recomputes silu in backward). Its fused linear cross-entropy is not used: our loss applies
the output layer at answer positions only (one or two tokens per sequence), which is already cheaper.

``model.kernels``: "auto" applies them where liger_kernel imports, its first kernel launches and matches eager, the
device is a GPU and the model is a LLaMA (other architectures keep the transformers code); "liger" insists (an
error says why it cannot); "none" never. "auto" falls back, saying why, on ANY failure before the model is
patched: a liger release can import lazily and raise only when its patch API is imported (0.8.5 under
transformers < 5.0), and Triton builds its launcher with a C compiler and Python headers at the first launch.
Patching happens on the loaded model instance before LoRA is added, so LoRA layers wrap the same projections.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from pipeline.core.errors import UnsupportedError

SUPPORTED_MODEL_TYPES = ("llama",)


def kernels_unavailable(model: Any, device: torch.device) -> str | None:
    """None when liger's kernels can be applied to ``model`` on ``device``, else why not."""
    if device.type != "cuda":
        return f"device is {device.type}: the Triton kernels need a GPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed"
    if getattr(torch.version, "hip", None) and _torch_older_than(2, 5):
        # Liger-Kernel's README lists torch >= 2.5 and triton >= 3.0 for ROCm (the CUDA minimum is torch 2.1.2).
        return f"ROCm needs torch >= 2.5 for liger-kernel, this is torch {torch.__version__}"
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} has no liger mapping here (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    try:
        first_launch(device, getattr(model, "config", None), getattr(model, "dtype", torch.float32))
    except Exception as exc:  # ImportError, RuntimeError from Triton, a compiler missing, a wrong result
        return f"liger-kernel failed its first launch: {type(exc).__name__}: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


def first_launch(device: torch.device, config: Any = None, dtype: torch.dtype = torch.float32) -> None:
    """Import the patch API the run will call and launch each fused op once, forward and backward, at the model's
    sizes (RMSNorm against eager within tolerance; SwiGLU and RoPE must run).

    Raises whatever fails: the import (liger 0.8.5 refuses transformers < 5.0 there), Triton's launcher build (no C
    compiler or Python headers), an op that needs a newer torch (liger 0.6.5-0.8.4 reach for
    ``torch.distributed.tensor.DTensor`` at the first forward, absent in torch 2.3), or a wrong result.
    """
    key = (str(device), str(dtype), _sizes(config))
    if key in _LAUNCHED:
        return
    from liger_kernel.transformers import apply_liger_kernel_to_llama  # noqa: F401  (the API apply_kernels calls)
    from liger_kernel.transformers.rms_norm import LigerRMSNorm

    hidden, intermediate, heads, kv_heads, head_dim = _sizes(config)
    torch.manual_seed(0)
    x = torch.randn(8, hidden, device=device, dtype=torch.float32, requires_grad=True)
    fused = LigerRMSNorm(hidden, eps=1e-6).to(device)
    fused(x).square().sum().backward()
    grad_fused, x.grad = x.grad.clone(), None
    eager = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    eager.square().sum().backward()
    if not torch.allclose(grad_fused, x.grad, rtol=1e-3, atol=1e-3):
        raise RuntimeError("fused RMSNorm gradient differs from eager (max "
                           f"{(grad_fused - x.grad).abs().max().item():.2e})")
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    a, b = (torch.randn(2, intermediate, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    LigerSiLUMulFunction.apply(a, b).float().sum().backward()
    q = torch.randn(1, heads, 2, head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv_heads, 2, head_dim, device=device, dtype=dtype, requires_grad=True)
    cos, sin = torch.ones(1, 2, head_dim, device=device, dtype=dtype), torch.zeros(1, 2, head_dim, device=device,
                                                                                  dtype=dtype)
    q_out, k_out = liger_rotary_pos_emb(q, k, cos, sin)
    (q_out.float().sum() + k_out.float().sum()).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _LAUNCHED.add(key)


_LAUNCHED: set = set()  # (device, dtype, sizes) already launched in this process: the probe costs once


def _sizes(config: Any) -> tuple[int, int, int, int, int]:
    """(hidden, intermediate, heads, kv heads, head dim) of a LLaMA config; small defaults without one."""
    if config is None:
        return 256, 512, 4, 4, 64
    heads = config.num_attention_heads
    return (config.hidden_size, config.intermediate_size, heads,
            getattr(config, "num_key_value_heads", None) or heads,
            getattr(config, "head_dim", None) or config.hidden_size // heads)


def _torch_older_than(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    return (int(parts[0]), int(parts[1])) < (major, minor)


def apply_kernels(model: Any, requested: str, device: torch.device) -> tuple[str, str]:
    """Patch ``model`` in place as ``requested`` allows; return (kernels, why) for the run report."""
    if requested == "none":
        return "none", "model.kernels is 'none'"
    why_not = kernels_unavailable(model, device)
    if why_not is not None:
        if requested == "liger":
            raise UnsupportedError(f"model.kernels is 'liger' but it cannot run here: {why_not}; use kernels: auto")
        return "none", f"auto: {why_not}"
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    try:
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=model)
    except Exception as exc:
        # After the probe passed, a failure here may leave the model half-patched: no silent fallback.
        raise UnsupportedError(f"liger-kernel passed its first launch but failed to patch the model "
                               f"({type(exc).__name__}: {_first_line(exc)}); set model.kernels=none") from exc
    return "liger", f"{'auto: ' if requested == 'auto' else ''}liger-kernel RMSNorm, SwiGLU and RoPE (Triton)"


__all__ = ["apply_kernels", "kernels_unavailable"]
