"""Collectives: an all-reduce across all local GPUs, one process per GPU, with a correct-sum check and bus bandwidth.

torch.distributed's "nccl" backend is NCCL on CUDA builds and RCCL on ROCm builds. Each rank contributes rank + 1
(never zeros), so every element must come back as n(n+1)/2. Bandwidth follows nccl-tests: algbw = bytes / time,
busbw = algbw * 2(n-1)/n (the traffic each link carries in a ring), so with one GPU busbw is 0 by definition.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from checks import thresholds as T
from checks.core import FAIL, PASS, SKIP, Context, Result, check
from checks.gpu import gpu_skip_reason, probe
from kit import atomic

# NVLink multicast (NVLS) stays off in what we spawn: a smoke test needs plain ring/tree all-reduce, and on some
# shared hosts a program using multicast has taken the host's GPUs out of service. Forced, not defaulted.
CHILD_ENV = {"NCCL_NVLS_ENABLE": "0"}
CHILD_ENV_DEFAULTS = {"TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def worker(rank: int, world: int, init_method: str, backend: str, device_type: str, nbytes: int,
           warmup: int, repeats: int, out_dir: str) -> None:
    """One rank: correctness all-reduce, then timed all-reduces; writes rank<N>.json into out_dir."""
    import torch
    import torch.distributed as dist

    result: dict[str, Any] = {"rank": rank}
    try:
        if device_type == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                timeout=timedelta(seconds=T.ALLREDUCE_TIMEOUT_S))
        numel = nbytes // 4
        x = torch.full((numel,), float(rank + 1), device=device, dtype=torch.float32)
        dist.all_reduce(x)
        expected = world * (world + 1) / 2
        result["max_abs_diff"] = float((x - expected).abs().max())
        result["ok"] = result["max_abs_diff"] == 0.0
        buf = torch.randn(numel, device=device, dtype=torch.float32)

        def sync() -> None:
            if device_type == "cuda":
                torch.cuda.synchronize(device)
                dist.barrier(device_ids=[rank])  # names the GPU: NCCL otherwise guesses and warns
            else:
                dist.barrier()

        for _ in range(warmup):
            dist.all_reduce(buf)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(buf)
        sync()
        result["seconds"] = (time.perf_counter() - t0) / repeats
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if dist.is_initialized():
            from pipeline.core.compat import let_collective_threads_finish

            let_collective_threads_finish()  # else a hang (torch < 2.8) or an abort at exit (see its docstring)
            dist.destroy_process_group()
        # Whole or absent: the parent reads every rank's file after a deadline, and may kill a rank mid-write.
        atomic.write_text(Path(out_dir) / f"rank{rank}.json", json.dumps(result))


def run_all_reduce(world: int, backend: str, device_type: str, nbytes: int = T.ALLREDUCE_BYTES,
                   warmup: int = T.ALLREDUCE_WARMUP, repeats: int = T.ALLREDUCE_REPEATS,
                   timeout: float = T.ALLREDUCE_TIMEOUT_S, target=worker) -> list[Optional[dict]]:
    """Spawn ``world`` processes (fresh interpreters: CUDA cannot be forked) and collect each rank's result; a
    rank that did not report in time is None and is killed."""
    import multiprocessing as mp

    spawn = mp.get_context("spawn")
    saved = {k: os.environ.get(k) for k in {**CHILD_ENV, **CHILD_ENV_DEFAULTS}}
    os.environ.update(CHILD_ENV)
    for key, value in CHILD_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory(prefix="checks-allreduce-") as out_dir:
        init = f"file://{out_dir}/rendezvous"
        procs = [spawn.Process(target=target, args=(rank, world, init, backend, device_type, nbytes, warmup,
                                                    repeats, out_dir), daemon=True) for rank in range(world)]
        try:
            for p in procs:
                p.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        results: list[Optional[dict]] = []
        for rank in range(world):
            path = Path(out_dir) / f"rank{rank}.json"
            results.append(json.loads(path.read_text()) if path.exists() else None)
    return results


def summarize(results: list[Optional[dict]], world: int, nbytes: int, library: str) -> Result:
    name = "collectives.all_reduce"
    missing = [str(r) for r, res in enumerate(results) if res is None]
    errors = [f"rank {res['rank']}: {res['error']}" for res in results if res and "error" in res]
    wrong = [f"rank {res['rank']}: off by {res['max_abs_diff']:g}" for res in results
             if res and "error" not in res and not res["ok"]]
    hint = (f"{library} could not all-reduce across the GPUs: run with NCCL_DEBUG=INFO to see the transport; "
            "check access.shm (NCCL needs /dev/shm), that the GPUs can reach each other (nvidia-smi topo -m / "
            "rocm-smi --showtopo), and ACS/IOMMU settings on the host")
    if missing or errors or wrong:
        detail = "; ".join(([f"ranks {', '.join(missing)} timed out or died"] if missing else []) + errors + wrong)
        return Result(name, FAIL, "wrong sum" if wrong and not (missing or errors) else "failed", detail, hint,
                      data={"world": world, "ranks": results})
    seconds = max(res["seconds"] for res in results if res)
    algbw = nbytes / seconds / 1e9
    busbw = algbw * 2 * (world - 1) / world
    detail = f"{library}, {world} rank(s), {nbytes / 1024**2:.0f} MiB float32, sum exact on every rank; "
    if world == 1:  # one rank copies locally: its "algbw" says nothing about links
        detail += "n=1: no inter-GPU traffic, busbw is 0 by definition"
    else:
        detail += f"algbw {algbw:.1f} GB/s"
    return Result(name, PASS, f"busbw {busbw:.1f} GB/s (n={world})", detail,
                  data={"world": world, "algbw_gbps": algbw, "busbw_gbps": busbw, "seconds": seconds,
                        "bytes": nbytes})


@check("collectives.all_reduce")
def all_reduce(ctx: Context) -> Result:
    """All-reduce across all local GPUs (RCCL on ROCm, NCCL on CUDA): exact sum and bus bandwidth."""
    if (reason := gpu_skip_reason(ctx)) is not None:
        return Result("collectives.all_reduce", SKIP, "", reason)
    p = probe(ctx)
    world = len(p.devices)
    results = run_all_reduce(world, "nccl", "cuda")
    return summarize(results, world, T.ALLREDUCE_BYTES, "RCCL" if p.backend == "hip" else "NCCL")
