"""The numerics checks' measurements run for real on the CPU here (small shapes); a deliberately wrong operation
must make them fail. The checks themselves run on fake GPUs whose device is the CPU."""

import types

import pytest
import torch
import torch.nn.functional as F

from checks import numerics as N
from checks.core import FAIL, PASS, SKIP, WARN
from checks.gpu import Device

from .conftest import H200, MI300X, make_ctx

CPU = torch.device("cpu")
SMALL_ATTENTION = (1, 2, 128, 32)


def causal_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.fixture
def gpus_on_cpu(monkeypatch):
    """Fake GPUs whose torch device is the CPU, and small problem sizes."""
    monkeypatch.setattr(N, "_device", lambda dev: CPU)
    real_matmul, real_attention, real_nf4 = N.measure_matmul_bf16, N.measure_attention, N.measure_nf4
    monkeypatch.setattr(N, "measure_matmul_bf16",
                        lambda device, **kw: real_matmul(device, n=192, warmup=1, repeats=2, **kw))
    monkeypatch.setattr(N, "measure_attention", lambda device, fn: real_attention(device, fn, SMALL_ATTENTION))
    monkeypatch.setattr(N, "measure_nf4", lambda device, bs, bnb=None: real_nf4(device, bs, (256, 256), 4, bnb))


# --- measurements ---

def test_bf16_matmul_error_is_small_and_throughput_positive():
    m = N.measure_matmul_bf16(CPU, n=256, warmup=1, repeats=2)
    assert m["rel_err"] < 5e-3 and m["tflops"] > 0


def test_bf16_matmul_wrong_result_is_measured():
    m = N.measure_matmul_bf16(CPU, n=128, warmup=1, repeats=1, matmul=lambda a, b: a @ b.t())
    assert m["rel_err"] > 1.0


def test_attention_reference_matches_sdpa_and_catches_a_missing_mask():
    good = N.measure_attention(CPU, causal_sdpa, SMALL_ATTENTION)
    assert good["fwd_rel_err"] < 5e-3 and good["bwd_rel_err"] < 1e-2
    bad = N.measure_attention(CPU, lambda q, k, v: F.scaled_dot_product_attention(q, k, v), SMALL_ATTENTION)
    assert bad["fwd_rel_err"] > 0.1 and bad["bwd_rel_err"] > 0.1


def test_nf4_real_bitsandbytes_on_cpu_is_within_the_method_bounds():
    m = N.measure_nf4(CPU, 64, (256, 256), 4)
    assert N.judge_nf4(m) == [], m
    assert m["levels_per_block"] <= 16


def test_nf4_judge_catches_broken_dequantization():
    import bitsandbytes

    class BrokenFunctional:
        def __getattr__(self, name):
            return getattr(bitsandbytes.functional, name)

        @staticmethod
        def dequantize_4bit(packed, state):
            return bitsandbytes.functional.dequantize_4bit(packed, state) * 1.3

    broken = types.SimpleNamespace(functional=BrokenFunctional(), matmul_4bit=bitsandbytes.matmul_4bit)
    problems = N.judge_nf4(N.measure_nf4(CPU, 64, (256, 256), 4, bnb=broken))
    assert any("round-trip error" in p for p in problems)
    assert any("4-bit matmul error" in p for p in problems)


def test_nf4_judge_catches_a_quantizer_that_does_nothing():
    m = {"roundtrip_rel_err": 0.0, "levels_per_block": 64, "matmul_rel_err": 0.0, "grad_rel_err": 0.0,
         "gemv_rel_err": 0.0}
    problems = N.judge_nf4(m)
    assert len(problems) == 2 and "not 4-bit" in problems[1]


# --- checks: skip, pass, fail ---

@pytest.mark.parametrize("fn", [N.matmul_bf16, N.flash_attention, N.bnb_nf4])
def test_gpu_checks_skip_on_a_cpu_host_with_the_reason(fn):
    res = fn(make_ctx(torch_version="2.13.0+cpu"))
    assert res.status == SKIP and res.detail == "no GPU: torch 2.13.0+cpu is a CPU-only build"


def test_matmul_check_pass_fail_and_slow(gpus_on_cpu, monkeypatch):
    ctx = make_ctx("cuda", (H200,), ("sm_90",), "12.1")
    monkeypatch.setitem(N.T.MATMUL_MIN_TFLOPS, "sm_90", 0.0)
    assert N.matmul_bf16(ctx).status == PASS
    monkeypatch.setitem(N.T.MATMUL_MIN_TFLOPS, "sm_90", 1e9)
    res = N.matmul_bf16(ctx)
    assert res.status == WARN and "expected for sm_90" in res.detail
    monkeypatch.setattr(torch, "matmul", lambda a, b: (a @ b) * 1.05)
    res = N.matmul_bf16(ctx)
    assert res.status == FAIL and "relative error" in res.detail and res.hint


def test_matmul_check_folds_several_gpus_worst_first(gpus_on_cpu, monkeypatch):
    calls = []

    def fake(device, **kw):
        calls.append(device)
        return {"rel_err": [1e-3, 5e-2][len(calls) - 1], "tflops": 700.0, "n": 8192}

    monkeypatch.setattr(N, "measure_matmul_bf16", fake)
    ctx = make_ctx("cuda", (H200, Device(1, "NVIDIA H200", "sm_90", 139.8)), ("sm_90",), "12.1")
    res = N.matmul_bf16(ctx)
    assert res.status == FAIL and "worst of 2 GPUs" in res.value and "gpu1: relative error" in res.detail
    assert [d["gpu"] for d in res.data["per_gpu"]] == [0, 1]


def test_flash_attention_check_pass_and_fail(gpus_on_cpu, monkeypatch):
    ctx = make_ctx("cuda", (H200,), ("sm_90",), "12.1")
    monkeypatch.setattr(N, "pick_attention", lambda ctx: ("test sdpa", causal_sdpa, ""))
    res = N.flash_attention(ctx)
    assert res.status == PASS and "test sdpa" in res.detail
    monkeypatch.setattr(N, "pick_attention", lambda ctx: ("broken", lambda q, k, v: causal_sdpa(q, v, k), ""))
    res = N.flash_attention(ctx)
    assert res.status == FAIL and "forward error" in res.detail and "gradient error" in res.detail


def test_flash_attention_without_a_flash_kernel(gpus_on_cpu, monkeypatch, tmp_path, no_default_build_info):
    def unavailable(q, k, v):
        raise RuntimeError("No available kernel. Aborting execution.")

    picked = ("torch SDPA flash kernel", unavailable, "flash_attn not installed")
    monkeypatch.setattr(N, "pick_attention", lambda ctx: picked)
    res = N.flash_attention(make_ctx("hip", (MI300X,), ("gfx942",), "6.0"))
    assert res.status == WARN and res.value == "no flash kernel"
    info = tmp_path / "b.json"
    info.write_text('{"schema": 1, "vendor": "rocm", "torch_version": "2.3.1", "rocm_version": "6.1.2", '
                    '"gpu_archs": ["gfx942"], "flash_attn_version": "2.6.3"}')
    res = N.flash_attention(make_ctx("hip", (MI300X,), ("gfx942",), "6.0", env={"KIT_BUILD_INFO": str(info)}))
    assert res.status == FAIL  # the image promised flash-attn


def test_pick_attention_uses_torch_flash_when_flash_attn_is_absent():
    pytest.importorskip("torch.nn.attention")
    name, fn, note = N.pick_attention(make_ctx())
    assert "SDPA flash kernel" in name and note == "flash_attn not installed"
    # torch has a CPU flash kernel too, so the forced-flash function runs here, and must be right.
    m = N.measure_attention(CPU, fn, SMALL_ATTENTION)
    assert m["fwd_rel_err"] < 5e-3 and m["bwd_rel_err"] < 1e-2


def test_bnb_check_pass_and_fail(gpus_on_cpu, monkeypatch):
    ctx = make_ctx("cuda", (H200,), ("sm_90",), "12.1")
    res = N.bnb_nf4(ctx)
    assert res.status == PASS, res.detail
    assert "blocksize 64" in res.detail
    monkeypatch.setattr(N, "judge_nf4", lambda m: ["round-trip error 0.5 outside [0.06, 0.12] expected of NF4"])
    res = N.bnb_nf4(ctx)
    assert res.status == FAIL and "round-trip" in res.detail and "BNB_ROCM_ARCH" in res.hint


def test_bnb_check_fails_when_not_installed_and_uses_rocm_blocksize(gpus_on_cpu, monkeypatch):
    def missing():
        raise ModuleNotFoundError("No module named 'bitsandbytes'", name="bitsandbytes")

    monkeypatch.setattr(N, "import_bitsandbytes", missing)
    res = N.bnb_nf4(make_ctx("cuda", (H200,), ("sm_90",), "12.1"))
    assert res.status == FAIL and res.value == "not installed"


def test_bnb_check_uses_blocksize_128_on_rocm(gpus_on_cpu):
    res = N.bnb_nf4(make_ctx("hip", (MI300X,), ("gfx942",), "6.0"))
    assert res.status == PASS and "blocksize 128" in res.detail
