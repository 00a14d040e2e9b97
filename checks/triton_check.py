"""A real Triton kernel on each GPU: one RMSNorm forward and backward, written in Triton, against eager PyTorch.

Why a check of its own: the fused kernels the pipeline applies (liger-kernel's RMSNorm, SwiGLU and RoPE) are
Triton kernels, and Triton compiles two things at the first launch: the kernel (with its bundled LLVM/ptxas, or
the ROCm backend) and a small C launcher, built with the system C compiler against Python's headers. A runtime
image without gcc or Python.h imports triton fine and fails only at that first launch, deep inside a training
step. This check launches the same kind of kernel first, so a missing toolchain is one table row with the fix.

The kernels below use only what Triton 2.3 (the CUDA image's, pinned by torch 2.3.1) and Triton 3.x both have.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path
from typing import Any, Optional

from checks import thresholds as T
from checks.core import FAIL, PASS, SKIP, Context, Result, check
from checks.gpu import gpu_skip_reason, probe, rel_err

NAME = "numerics.triton_rmsnorm"
TOOLCHAIN_HINT = ("Triton builds its kernel launcher with a C compiler against Python's headers at the first "
                  "launch: install them (Ubuntu: apt-get install gcc libc6-dev python3.10-dev; the kit's CUDA "
                  "image has them), or point CC at a compiler")


def missing_toolchain() -> list[str]:
    """What Triton's launcher build needs and this host lacks (empty: nothing missing).

    Triton looks for $CC, else gcc, else clang (triton/common/build.py in 2.3, triton/runtime/build.py in 3.x),
    and includes Python.h from sysconfig's include path."""
    missing = []
    cc = os.environ.get("CC")
    if not (shutil.which(cc) if cc else (shutil.which("gcc") or shutil.which("clang"))):
        missing.append(f"C compiler ({'CC=' + cc if cc else 'gcc or clang'}) not on PATH")
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        missing.append(f"Python headers ({include}/Python.h) not installed")
    return missing


def _kernels() -> tuple[Any, Any]:
    """The forward and backward kernels, defined on first use so that importing checks never imports triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def rmsnorm_fwd(x_ptr, w_ptr, y_ptr, rstd_ptr, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)  # 1/sqrt: tl.math.rsqrt moved in Triton 3
        tl.store(rstd_ptr + row, rstd)
        tl.store(y_ptr + row * n_cols + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def rmsnorm_bwd(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_rows_ptr, n_cols, BLOCK: tl.constexpr):
        # dx = rstd * (dy*w) - x * rstd^3 * mean(dy*w*x); dw per row = dy * x * rstd (rows summed afterwards).
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        dy = tl.load(dy_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        dyw = dy * w
        dot = tl.sum(dyw * x, axis=0) / n_cols
        dx = rstd * dyw - x * (rstd * rstd * rstd) * dot
        tl.store(dx_ptr + row * n_cols + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dw_rows_ptr + row * n_cols + cols, dy * x * rstd, mask=mask)

    return rmsnorm_fwd, rmsnorm_bwd


def triton_rmsnorm(x, w, dy, eps: float) -> tuple[Any, Any, Any]:
    """(y, dx, dw) of RMSNorm over the last dim of 2-D ``x``, by the Triton kernels above (two launches)."""
    import torch
    import triton

    fwd, bwd = _kernels()
    rows, cols = x.shape
    block = triton.next_power_of_2(cols)
    y, dx = torch.empty_like(x), torch.empty_like(x)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    dw_rows = torch.empty(rows, cols, device=x.device, dtype=torch.float32)
    fwd[(rows,)](x, w, y, rstd, cols, eps, BLOCK=block)
    bwd[(rows,)](dy, x, w, rstd, dx, dw_rows, cols, BLOCK=block)
    return y, dx, dw_rows.sum(0).to(w.dtype)


def eager_rmsnorm(x, w, dy, eps: float) -> tuple[Any, Any, Any]:
    """The same three in float32 eager PyTorch through autograd, from the very same bf16 values."""
    xf, wf = x.float().requires_grad_(True), w.float().requires_grad_(True)
    y = xf * (xf.pow(2).mean(-1, keepdim=True) + eps).rsqrt() * wf
    y.backward(dy.float())
    return y.detach(), xf.grad, wf.grad


def measure_triton_rmsnorm(device, shape: Optional[tuple[int, int]] = None) -> dict[str, float]:
    """Relative errors of the Triton forward, input gradient and weight gradient against eager float32."""
    import torch

    shape = shape or T.TRITON_RMSNORM_SHAPE
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    w = (1.0 + 0.1 * torch.randn(shape[1], device=device, generator=gen)).to(torch.bfloat16)
    dy = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    got = triton_rmsnorm(x, w, dy, T.TRITON_RMSNORM_EPS)
    ref = eager_rmsnorm(x, w, dy, T.TRITON_RMSNORM_EPS)
    fwd, dx, dw = (rel_err(g, r) for g, r in zip(got, ref, strict=True))
    return {"fwd_rel_err": fwd, "dx_rel_err": dx, "dw_rel_err": dw, "rows": shape[0], "cols": shape[1]}


def judge_triton_rmsnorm(m: dict[str, float]) -> list[str]:
    """What is wrong with a measurement (empty: nothing)."""
    bad = []
    for key, what, limit in (("fwd_rel_err", "forward", T.TRITON_RMSNORM_FWD_MAX_REL_ERR),
                             ("dx_rel_err", "input gradient", T.TRITON_RMSNORM_BWD_MAX_REL_ERR),
                             ("dw_rel_err", "weight gradient", T.TRITON_RMSNORM_BWD_MAX_REL_ERR)):
        if not m[key] <= limit:
            bad.append(f"{what} error {m[key]:.2e} > {limit:g}")
    return bad


def _launch_failure(exc: Exception, triton_version: str) -> Result:
    """A failed first launch: a toolchain failure gets the install hint, anything else the library's words."""
    text = f"{type(exc).__name__}: {exc}"
    if "lcuda" in text or "libcuda" in text:  # Triton 2.3 links the launcher with -lcuda (the driver's library)
        hint = ("the launcher links the driver's libcuda.so: run with the NVIDIA Container Toolkit (--gpus) or "
                "set TRITON_LIBCUDA_PATH to the folder holding libcuda.so")
    elif any(s in text for s in ("Python.h", "gcc", "clang", "CalledProcessError", "compiler", "cc1")):
        hint = TOOLCHAIN_HINT
    else:
        hint = ("Triton could not compile or launch for this GPU: check that triton is torch's own pin "
                "(pip show triton / pytorch-triton-rocm) and that the driver supports the runtime")
    return Result(NAME, FAIL, "launch failed", f"triton {triton_version}: {text.splitlines()[0][:300]}", hint=hint)


def _import_triton() -> tuple[Optional[Any], str]:
    """(triton module or None, why not)."""
    try:
        import triton
    except Exception as exc:  # ImportError, or a RuntimeError from a Triton without a backend for this build
        first = (str(exc).splitlines() or [""])[0][:160]
        return None, f"triton does not import ({type(exc).__name__}: {first})"
    return triton, ""


@check(NAME)
def triton_rmsnorm_check(ctx: Context) -> Result:
    """A Triton RMSNorm forward and backward on each GPU against eager (the fused kernels' toolchain works)."""
    if (reason := gpu_skip_reason(ctx)) is not None:
        return Result(NAME, SKIP, "", reason)
    triton, why = ctx.memo("triton", _import_triton)
    if triton is None:
        return Result(NAME, SKIP, "", f"{why}: the pipeline's kernels: auto falls back to eager without it")
    version = getattr(triton, "__version__", "?")
    if missing := missing_toolchain():
        return Result(NAME, FAIL, "no toolchain", f"triton {version}: " + "; ".join(missing), hint=TOOLCHAIN_HINT)
    import torch

    rows, data = [], []
    for dev in probe(ctx).devices:
        try:
            m = measure_triton_rmsnorm(torch.device("cuda", dev.index))
        except Exception as exc:  # the first launch is where a broken toolchain or backend shows
            return _launch_failure(exc, version)
        bad = judge_triton_rmsnorm(m)
        rows.append((dev, bad))
        data.append({"gpu": dev.index, **m})
    worst = max(data, key=lambda d: max(d["fwd_rel_err"], d["dx_rel_err"], d["dw_rel_err"]))
    value = f"fwd {worst['fwd_rel_err']:.1e}, bwd {max(worst['dx_rel_err'], worst['dw_rel_err']):.1e}"
    failed = [f"gpu{d.index}: " + "; ".join(bad) for d, bad in rows if bad]
    detail = f"triton {version}, {data[0]['rows']}x{data[0]['cols']} bf16; " + (
        "; ".join(failed) if failed else f"within {T.TRITON_RMSNORM_FWD_MAX_REL_ERR:g} fwd / "
        f"{T.TRITON_RMSNORM_BWD_MAX_REL_ERR:g} bwd on {len(rows)} GPU(s)")
    hint = "Triton computes wrong results on this GPU: use torch's own triton pin, then report it" if failed else ""
    return Result(NAME, FAIL if failed else PASS, value, detail, hint,
                  data={"triton": version, "per_gpu": data})
