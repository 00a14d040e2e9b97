"""numerics.triton_rmsnorm: skips without a GPU or triton, fails with the install hint when Triton's launcher
toolchain (C compiler, Python.h) is missing, and on a real GPU launches its Triton kernels and passes."""

import sys
import types

import pytest
import torch

from checks import catalog
from checks import triton_check as TC
from checks.core import FAIL, PASS, SKIP

from .conftest import H200, make_ctx


def test_registered_in_the_numerics_group():
    names = [c.name for c in catalog.all_checks()]
    assert TC.NAME in names
    numerics = [n for n in names if n.startswith("numerics.")]
    assert names.index(TC.NAME) == names.index(numerics[-1])  # after the other numerics rows, before collectives


def test_skips_without_a_gpu():
    res = TC.triton_rmsnorm_check(make_ctx())
    assert res.status == SKIP and "no GPU" in res.detail


def test_skips_without_triton(monkeypatch):
    ctx = make_ctx("cuda", (H200,), runtime="12.1")
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    res = TC.triton_rmsnorm_check(ctx)
    assert res.status == SKIP and "triton does not import" in res.detail and "kernels: auto" in res.detail


def _fake_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="2.3.1"))


def test_missing_compiler_fails_with_the_fix(monkeypatch):
    ctx = make_ctx("cuda", (H200,), runtime="12.1")
    _fake_triton(monkeypatch)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(TC.shutil, "which", lambda name: None)
    res = TC.triton_rmsnorm_check(ctx)
    assert res.status == FAIL and res.value == "no toolchain"
    assert "gcc or clang" in res.detail and "triton 2.3.1" in res.detail
    assert "apt-get install gcc" in res.hint and "python3.10-dev" in res.hint


def test_missing_python_headers_fail_with_the_fix(monkeypatch, tmp_path):
    ctx = make_ctx("cuda", (H200,), runtime="12.1")
    _fake_triton(monkeypatch)
    monkeypatch.setenv("CC", sys.executable)  # any program on PATH stands for the compiler
    monkeypatch.setattr(TC.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    res = TC.triton_rmsnorm_check(ctx)
    assert res.status == FAIL and "Python.h" in res.detail and "python3.10-dev" in res.hint


def test_a_named_cc_that_is_missing_is_reported(monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc-here")
    assert any("CC=no-such-cc-here" in m for m in TC.missing_toolchain())


def test_a_compiler_error_at_launch_gets_the_toolchain_hint():
    exc = RuntimeError("/tmp/x/main.c:1:10: fatal error: Python.h: No such file or directory")
    res = TC._launch_failure(exc, "2.3.1")
    assert res.status == FAIL and res.hint == TC.TOOLCHAIN_HINT
    res = TC._launch_failure(RuntimeError("/usr/bin/ld: cannot find -lcuda"), "2.3.1")
    assert "libcuda" in res.hint and "TRITON_LIBCUDA_PATH" in res.hint


def test_eager_reference_gradients_match_the_closed_form():
    """The backward formula the Triton kernel implements, in torch on the CPU, against autograd's reference."""
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(8, 32, generator=gen), torch.randn(8, 32, generator=gen)
    w = 1.0 + 0.1 * torch.randn(32, generator=gen)
    y, dx, dw = TC.eager_rmsnorm(x, w, dy, 1e-6)
    rstd = (x.pow(2).mean(-1, keepdim=True) + 1e-6).rsqrt()
    dyw = dy * w
    dx_closed = rstd * dyw - x * rstd**3 * (dyw * x).mean(-1, keepdim=True)
    assert torch.allclose(dx, dx_closed, atol=1e-5) and torch.allclose(dw, (dy * x * rstd).sum(0), atol=1e-5)


def test_judge_catches_a_wrong_gradient():
    good = {"fwd_rel_err": 2e-3, "dx_rel_err": 3e-3, "dw_rel_err": 3e-3}
    assert TC.judge_triton_rmsnorm(good) == []
    assert TC.judge_triton_rmsnorm({**good, "dx_rel_err": 0.5}) == [
        f"input gradient error 5.00e-01 > {TC.T.TRITON_RMSNORM_BWD_MAX_REL_ERR:g}"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU: torch sees none here")
def test_real_triton_kernel_on_the_gpu():
    from checks.core import Context

    res = TC.triton_rmsnorm_check(Context(require_gpu=True))
    assert res.status == PASS, res
    m = res.data["per_gpu"][0]
    assert m["fwd_rel_err"] < 1e-2 and m["dx_rel_err"] < 1e-2 and m["dw_rel_err"] < 1e-2
    # A wrong kernel must be caught on the GPU too: the measurement with the weight gradient's rows not summed.
    dev = torch.device("cuda", 0)
    x = torch.randn(64, 256, device=dev, dtype=torch.bfloat16)
    w = torch.ones(256, device=dev, dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    y, dx, dw = TC.triton_rmsnorm(x, w, dy, 1e-6)
    ref = TC.eager_rmsnorm(x, w, dy, 1e-6)
    assert TC.judge_triton_rmsnorm({"fwd_rel_err": 0.0, "dx_rel_err": 0.0,
                                    "dw_rel_err": float((dw.float() * 2 - ref[2]).norm() / ref[2].norm())})
