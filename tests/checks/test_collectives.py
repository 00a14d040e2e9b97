"""The all-reduce machinery runs for real on the CPU through gloo (the same spawn, rendezvous, correctness and
timing code the GPU check runs through NCCL/RCCL)."""

import json
import time

import pytest
import torch.distributed as dist

from checks import collectives as C
from checks.core import FAIL, PASS, SKIP

from .conftest import make_ctx

MIB = 1024**2


def hang(*args):
    time.sleep(600)


def test_two_ranks_over_gloo_sum_exactly_and_report_bandwidth():
    results = C.run_all_reduce(2, "gloo", "cpu", nbytes=MIB, warmup=1, repeats=3, timeout=120)
    assert all(r is not None and "error" not in r for r in results), results
    res = C.summarize(results, 2, MIB, "gloo")
    assert res.status == PASS and res.data["busbw_gbps"] > 0
    assert res.data["busbw_gbps"] == pytest.approx(res.data["algbw_gbps"])  # 2(n-1)/n = 1 for n = 2


def test_one_rank_notes_that_busbw_is_zero(tmp_path):
    C.worker(0, 1, f"file://{tmp_path}/rdv", "gloo", "cpu", MIB, 1, 2, str(tmp_path))
    res = C.summarize([json.loads((tmp_path / "rank0.json").read_text())], 1, MIB, "NCCL")
    assert res.status == PASS and res.value == "busbw 0.0 GB/s (n=1)" and "n=1" in res.detail


def test_a_wrong_sum_fails(tmp_path, monkeypatch):
    real = dist.all_reduce

    def off_by_one(tensor, *args, **kwargs):
        out = real(tensor, *args, **kwargs)
        tensor.add_(1)
        return out

    monkeypatch.setattr(dist, "all_reduce", off_by_one)
    C.worker(0, 1, f"file://{tmp_path}/rdv", "gloo", "cpu", MIB, 1, 1, str(tmp_path))
    res = C.summarize([json.loads((tmp_path / "rank0.json").read_text())], 1, MIB, "NCCL")
    assert res.status == FAIL and res.value == "wrong sum" and "off by 1" in res.detail and "NCCL_DEBUG" in res.hint


def test_a_rank_error_is_reported(tmp_path):
    C.worker(0, 1, f"file://{tmp_path}/rdv", "no-such-backend", "cpu", MIB, 1, 1, str(tmp_path))
    res = C.summarize([json.loads((tmp_path / "rank0.json").read_text())], 1, MIB, "NCCL")
    assert res.status == FAIL and "rank 0:" in res.detail


def test_a_hanging_rank_is_killed_and_fails():
    start = time.monotonic()
    results = C.run_all_reduce(1, "gloo", "cpu", nbytes=MIB, timeout=3, target=hang)
    assert results == [None] and time.monotonic() - start < 60
    res = C.summarize(results, 1, MIB, "NCCL")
    assert res.status == FAIL and "timed out or died" in res.detail


def test_children_get_nvlink_multicast_off_and_the_parent_env_is_restored(monkeypatch):
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    seen = {}

    class Recorder:
        def __init__(self, *a, **k):
            seen.update({k: C.os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "NVSHMEM_DISABLE_NVLS")})

        def start(self):
            pass

        def join(self, timeout=None):
            pass

        def is_alive(self):
            return False

    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    monkeypatch.setattr(type(ctx), "Process", Recorder, raising=False)
    C.run_all_reduce(1, "gloo", "cpu", nbytes=MIB, timeout=1)
    assert seen == {"NCCL_NVLS_ENABLE": "0", "NVSHMEM_DISABLE_NVLS": "1"}
    assert C.os.environ["NCCL_NVLS_ENABLE"] == "1"


def test_check_skips_on_a_cpu_host():
    res = C.all_reduce(make_ctx(torch_version="2.13.0+cpu"))
    assert res.status == SKIP and "CPU-only" in res.detail
