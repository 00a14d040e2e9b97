"""The checks on a real GPU: every GPU check must pass, and a wrong kernel must be caught there too.

Skipped on machines without a CUDA or ROCm GPU (CI); run on GPU machines with
``python -m pytest -m gpu tests/checks``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU: torch sees none here"),
]

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECKS = ["platform.torch", "platform.driver", "platform.gpus", "numerics.matmul_bf16",
              "numerics.flash_attention", "numerics.bnb_nf4", "numerics.triton_rmsnorm", "collectives.all_reduce",
              "pipeline.qlora"]


@pytest.fixture(scope="module")
def gpu_run():
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "checks", "--json", "--require-gpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc, {r["name"]: r for r in json.loads(proc.stdout)}


@pytest.mark.parametrize("name", GPU_CHECKS)
def test_gpu_check_passes(gpu_run, name):
    proc, results = gpu_run
    res = results[name]
    if name == "numerics.bnb_nf4" and res["value"] == "not installed":
        pytest.skip("bitsandbytes is not installed on this GPU machine")
    assert res["status"] == "pass", (res, proc.stderr[-3000:])


def test_bnb_and_pipeline_ran_the_4bit_path(gpu_run):
    _, results = gpu_run
    assert results["pipeline.qlora"]["data"]["quantization_path"] == "nf4"


def test_wrong_kernels_are_caught_on_the_gpu():
    from checks import numerics as N

    dev = torch.device("cuda", 0)
    m = N.measure_matmul_bf16(dev, n=1024, warmup=1, repeats=2, matmul=lambda a, b: a @ b.t())
    assert m["rel_err"] > N.T.MATMUL_BF16_MAX_REL_ERR
    bad = N.measure_attention(dev, lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                              (1, 4, 256, 64))
    assert bad["fwd_rel_err"] > N.T.ATTENTION_FWD_MAX_REL_ERR
