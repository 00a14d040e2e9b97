"""Numerics on each GPU: bf16 matmul, FlashAttention forward and backward, bitsandbytes NF4.

Each measurement function takes a device and the operation under test, so the same code runs on the GPUs in a
real check and on the CPU in unit tests (where a deliberately wrong operation must make it fail). Inputs are
random normal, never zeros; references are computed in float32 (or float64) from the very same bf16 values, so
the error measured is the kernel's, not the inputs' rounding. Tolerances and their derivation: thresholds.py.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional

from checks import thresholds as T
from checks.build_info import image_build_info
from checks.core import FAIL, PASS, SKIP, WARN, Context, Result, check
from checks.gpu import Device, gpu_skip_reason, probe, rel_err

_ORDER = {PASS: 0, SKIP: 1, WARN: 2, FAIL: 3}


def median_seconds(fn: Callable[[], Any], device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` after warm-up: CUDA/HIP events on a GPU (host timers would measure launches)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_matmul_bf16(device, n: Optional[int] = None, matmul: Optional[Callable] = None,
                        warmup: Optional[int] = None, repeats: Optional[int] = None) -> dict[str, float]:
    """Relative error of a bf16 n x n x n product against float32 on the same bf16 inputs, and its TFLOP/s."""
    import torch

    n, warmup, repeats = n or T.MATMUL_N, warmup or T.MATMUL_WARMUP, repeats or T.MATMUL_REPEATS
    matmul = matmul or torch.matmul
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    got = matmul(a, b)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # a TF32 reference would carry ~1e-3 error itself
    try:
        ref = a.float() @ b.float()
    finally:
        torch.set_float32_matmul_precision(previous)
    err = rel_err(got, ref)
    del ref
    seconds = median_seconds(lambda: matmul(a, b), device, warmup, repeats)
    return {"rel_err": err, "tflops": 2 * n**3 / seconds / 1e12, "n": n}


def reference_attention(q, k, v):
    """Causal softmax(q k^T / sqrt(d)) v in float32, layout (batch, heads, seq, dim)."""
    import torch

    q, k, v = q.float(), k.float(), v.float()
    scores = (q @ k.transpose(-2, -1)) / (q.shape[-1] ** 0.5)
    seq = q.shape[-2]
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v


def measure_attention(device, attention: Callable, shape: Optional[tuple[int, int, int, int]] = None,
                      dtype=None) -> dict[str, float]:
    """Forward output and input gradients of ``attention(q, k, v)`` (causal, (B, H, S, D), bf16) against the
    float32 reference on the same inputs and the same upstream gradient."""
    import torch

    dtype, shape = dtype or torch.bfloat16, shape or T.ATTENTION_SHAPE
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen) for _ in range(3))
    grad_out = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    q1, k1, v1 = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = attention(q1, k1, v1)
    out.backward(grad_out)
    q2, k2, v2 = (t.float().requires_grad_(True) for t in (q, k, v))
    ref = reference_attention(q2, k2, v2)
    ref.backward(grad_out.float())
    fwd = rel_err(out, ref)
    bwd = max(rel_err(a.grad, b.grad) for a, b in ((q1, q2), (k1, k2), (v1, v2)))
    return {"fwd_rel_err": fwd, "bwd_rel_err": bwd}


def pick_attention(ctx: Context) -> tuple[str, Optional[Callable], str]:
    """(implementation name, fn in (B, H, S, D) layout, note). fn None: no FlashAttention here (note says why).

    The flash_attn package when it imports (what the pipeline uses with attention=flash_attention_2), else
    PyTorch's own FlashAttention kernel, forced through sdpa_kernel so that no other backend can stand in."""
    try:
        from flash_attn import flash_attn_func
    except ModuleNotFoundError as exc:
        if exc.name != "flash_attn":  # the package is there but its compiled extension is not: a broken build
            raise
    else:  # an ImportError with "undefined symbol" (built against another torch) propagates: the check fails on it

        def flash(q, k, v):
            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return out.transpose(1, 2)

        import flash_attn

        return f"flash_attn {getattr(flash_attn, '__version__', '?')}", flash, ""
    import torch
    import torch.nn.functional as F

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3

        def only_flash():
            return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    except ImportError:  # torch < 2.3

        def only_flash():
            return torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False)

    def torch_flash(q, k, v):
        with only_flash():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return f"torch {torch.__version__} SDPA flash kernel", torch_flash, "flash_attn not installed"


def _fold(name: str, rows: list[tuple[Device, str, str, str]], hint: str, data: list[dict]) -> Result:
    """One table row from one (status, value, detail) per GPU: the worst status wins and its value is shown."""
    worst = max(rows, key=lambda r: _ORDER[r[1]])
    status = worst[1]
    value = worst[2] if len(rows) == 1 else f"{worst[2]} (worst of {len(rows)} GPUs)"
    detail = "; ".join(f"gpu{d.index}: {det}" for d, _, _, det in rows)
    return Result(name, status, value, detail, hint if status in (WARN, FAIL) else "", data={"per_gpu": data})


def _device(dev: Device):
    import torch

    return torch.device("cuda", dev.index)


@check("numerics.matmul_bf16")
def matmul_bf16(ctx: Context) -> Result:
    """bf16 matmul on each GPU: relative error against fp32 on the same inputs, and TFLOP/s."""
    if (reason := gpu_skip_reason(ctx)) is not None:
        return Result("numerics.matmul_bf16", SKIP, "", reason)
    rows, data = [], []
    for dev in probe(ctx).devices:
        m = measure_matmul_bf16(_device(dev))
        floor = T.MATMUL_MIN_TFLOPS.get(dev.arch)
        value = f"{m['tflops']:.0f} TFLOP/s, err {m['rel_err']:.1e}"
        if m["rel_err"] > T.MATMUL_BF16_MAX_REL_ERR:
            status, det = FAIL, f"relative error {m['rel_err']:.2e} > {T.MATMUL_BF16_MAX_REL_ERR:g}"
        elif floor is not None and m["tflops"] < floor:
            status, det = WARN, f"{m['tflops']:.0f} TFLOP/s < {floor:.0f} expected for {dev.arch}"
        else:
            status = PASS
            det = f"{m['n']}^3, err {m['rel_err']:.2e} <= {T.MATMUL_BF16_MAX_REL_ERR:g}" + (
                f", >= {floor:.0f} TFLOP/s floor" if floor else f", no TFLOP/s floor for {dev.arch}")
        rows.append((dev, status, value, det))
        data.append({"gpu": dev.index, **m})
    return _fold("numerics.matmul_bf16", rows, "wrong results: driver/runtime mismatch or a faulty GPU (check the "
                 "platform rows, then the GPU's health: nvidia-smi -q / rocm-smi); slow: check clocks, power and "
                 "cooling", data)


@check("numerics.flash_attention")
def flash_attention(ctx: Context) -> Result:
    """FlashAttention forward and backward on each GPU against a float32 reference attention."""
    if (reason := gpu_skip_reason(ctx)) is not None:
        return Result("numerics.flash_attention", SKIP, "", reason)
    info, _ = image_build_info(ctx)
    impl, fn, note = pick_attention(ctx)
    rows, data = [], []
    for dev in probe(ctx).devices:
        try:
            m = measure_attention(_device(dev), fn)
        except RuntimeError as exc:
            if "flash_attn" in impl or "No available kernel" not in str(exc):
                raise
            pinned = info is not None and info.flash_attn_version
            status = FAIL if pinned else WARN
            rows.append((dev, status, "no flash kernel", f"{impl}: {str(exc).splitlines()[0]}; {note}"))
            data.append({"gpu": dev.index, "impl": impl, "error": str(exc)})
            continue
        value = f"fwd {m['fwd_rel_err']:.1e}, bwd {m['bwd_rel_err']:.1e}"
        bad = []
        if m["fwd_rel_err"] > T.ATTENTION_FWD_MAX_REL_ERR:
            bad.append(f"forward error {m['fwd_rel_err']:.2e} > {T.ATTENTION_FWD_MAX_REL_ERR:g}")
        if m["bwd_rel_err"] > T.ATTENTION_BWD_MAX_REL_ERR:
            bad.append(f"gradient error {m['bwd_rel_err']:.2e} > {T.ATTENTION_BWD_MAX_REL_ERR:g}")
        det = f"{impl}; " + ("; ".join(bad) if bad else
                             f"within {T.ATTENTION_FWD_MAX_REL_ERR:g} fwd / {T.ATTENTION_BWD_MAX_REL_ERR:g} bwd")
        rows.append((dev, FAIL if bad else PASS, value, det))
        data.append({"gpu": dev.index, "impl": impl, **m})
    return _fold("numerics.flash_attention", rows,
                 "install flash-attn built for this torch and GPU arch (the images build it), or a torch whose "
                 "SDPA has a flash kernel for this GPU; without it training uses slower attention", data)


def import_bitsandbytes():
    import bitsandbytes
    import bitsandbytes.functional

    return bitsandbytes


def measure_nf4(device, blocksize: int, shape: Optional[tuple[int, int]] = None, batch: Optional[int] = None,
                bnb=None) -> dict[str, float]:
    """NF4 round trip error of N(0,1) weights, distinct levels per block, and the 4-bit matmul (batch and
    single-row paths, plus the input gradient QLoRA backpropagates through) against x @ dequantized(W).T."""
    import torch

    bnb = bnb or import_bitsandbytes()
    shape, batch = shape or T.NF4_SHAPE, batch or T.NF4_BATCH
    F = bnb.functional
    gen = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
    deq = F.dequantize_4bit(packed, state)
    blocks = deq.float().reshape(-1, blocksize)[:64]
    levels = max(int(torch.unique(row).numel()) for row in blocks)
    x = torch.randn(batch, shape[1], device=device, dtype=torch.bfloat16, generator=gen, requires_grad=True)
    y = bnb.matmul_4bit(x, packed.t(), quant_state=state)
    ref = x.detach().float() @ deq.float().t()
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    grad_ref = grad_out.float() @ deq.float()
    x1 = x.detach()[:1].clone()
    y1 = bnb.matmul_4bit(x1, packed.t(), quant_state=state)  # one row: the inference (gemv) kernel
    return {
        "roundtrip_rel_err": rel_err(deq, w),
        "levels_per_block": levels,
        "matmul_rel_err": rel_err(y, ref),
        "grad_rel_err": rel_err(x.grad, grad_ref),
        "gemv_rel_err": rel_err(y1, ref[:1]),
        "blocksize": blocksize,
    }


def judge_nf4(m: dict[str, float]) -> list[str]:
    """What is wrong with an NF4 measurement (empty: nothing)."""
    low, high = T.NF4_ROUNDTRIP_REL_ERR
    bad = []
    if not low <= m["roundtrip_rel_err"] <= high:
        bad.append(f"round-trip error {m['roundtrip_rel_err']:.3f} outside [{low}, {high}] expected of NF4")
    if m["levels_per_block"] > 16:
        bad.append(f"{m['levels_per_block']} distinct values in a block: not 4-bit")
    for key, what in (("matmul_rel_err", "4-bit matmul"), ("grad_rel_err", "input gradient"),
                      ("gemv_rel_err", "single-row matmul")):
        if not m[key] <= T.NF4_MATMUL_MAX_REL_ERR:
            bad.append(f"{what} error {m[key]:.2e} > {T.NF4_MATMUL_MAX_REL_ERR:g}")
    return bad


@check("numerics.bnb_nf4")
def bnb_nf4(ctx: Context) -> Result:
    """bitsandbytes NF4 on each GPU: quantize/dequantize error and 4-bit matmul against the dequantized weights."""
    if (reason := gpu_skip_reason(ctx)) is not None:
        return Result("numerics.bnb_nf4", SKIP, "", reason)
    try:
        bnb = import_bitsandbytes()
    except ModuleNotFoundError as exc:
        if exc.name != "bitsandbytes":
            raise
        return Result("numerics.bnb_nf4", FAIL, "not installed", "QLoRA's 4-bit base needs bitsandbytes",
                      hint="install the image's bitsandbytes (ROCm: built from source for the GPU arch)")
    blocksize = T.NF4_BLOCKSIZE_ROCM if probe(ctx).backend == "hip" else T.NF4_BLOCKSIZE_CUDA
    rows, data = [], []
    for dev in probe(ctx).devices:
        m = measure_nf4(_device(dev), blocksize, bnb=bnb)
        bad = judge_nf4(m)
        value = f"roundtrip {m['roundtrip_rel_err']:.3f}, matmul {m['matmul_rel_err']:.1e}"
        det = f"bitsandbytes {bnb.__version__}, blocksize {blocksize}; " + ("; ".join(bad) if bad else (
            f"grad {m['grad_rel_err']:.1e}, gemv {m['gemv_rel_err']:.1e}, <= 16 levels per block"))
        rows.append((dev, FAIL if bad else PASS, value, det))
        data.append({"gpu": dev.index, **m})
    return _fold("numerics.bnb_nf4", rows, "bitsandbytes' kernels are wrong for this GPU: rebuild it for this "
                 "arch (ROCm: -DBNB_ROCM_ARCH) and check it loads the library matching the runtime", data)
