"""slurm/finetune.sbatch submitted for real: a one-node Slurm cluster on this machine (scripts/ci/slurm-cluster.sh),
the CPU path (gloo, tiny model, 2 ranks from torchrun inside the job), KIT_RUNTIME=host instead of a container."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "slurm" / "finetune.sbatch"
CLUSTER = ROOT / "scripts" / "ci" / "slurm-cluster.sh"
sys.path.insert(0, str(ROOT))

from tests.pipeline.recipe_helpers import write_questions  # noqa: E402


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: slurmd runs the job as its submitting user and the test cluster's daemons run as root"
    for cmd in ("sbatch", "slurmctld", "slurmd", "munged"):
        if shutil.which(cmd) is None:
            return f"{cmd} is not installed (scripts/ci/slurm-install.sh installs Debian's slurm-wlm and munge)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(folder)], capture_output=True, text=True,
                             timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"))
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], capture_output=True, timeout=60)


def _wait(job: str, env: dict, timeout_s: float) -> str:
    """The job's final state, polling scontrol; cancels the job and fails when it outlives ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30)
        for word in shown.stdout.split():
            if word.startswith("JobState="):
                state = word.split("=", 1)[1]
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], env=env, capture_output=True, timeout=30)
    pytest.fail(f"job {job} still {state} after {timeout_s} s")


@pytest.mark.slurm
def test_template_runs_torchrun_on_the_allocation_and_writes_the_report(slurm_cluster, tiny_model_dir, tmp_path):
    train = write_questions(tmp_path / "train.jsonl", 16)
    evaluation = write_questions(tmp_path / "eval.jsonl", 6, offset=5)
    out = tmp_path / "run"
    env = dict(slurm_cluster, KIT_RUNTIME="host", KIT_PYTHON=sys.executable, KIT_NPROC_PER_NODE="2",
               KIT_DIR=str(ROOT), KIT_RDZV_PORT="29561", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes", "1", "--time", "10", "--output", str(tmp_path / "job-%j.out"),
         str(TEMPLATE), "--recipe", str(ROOT / "recipes" / "demo-cpu.yaml"), "--plain",
         f"model.name_or_path={tiny_model_dir}", "data.source=files", f"data.train={train}", f"data.eval={evaluation}",
         "data.max_length=128", "lora.r=8", "lora.alpha=16", "train.steps=3", "train.batch_size=4",
         "train.checkpoint_every=0", f"train.output_dir={out}", "eval.before_training=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    state = _wait(job, env, timeout_s=300)
    log = (tmp_path / f"job-{job}.out").read_text(errors="replace")
    assert state == "COMPLETED", log[-4000:]
    assert f"job {job}, 1 node(s) x 2 process(es), runtime host" in log
    report = json.loads((out / "report.json").read_text())
    training = report["training"]
    assert training["world_size"] == 2 and training["steps"] == 3
    assert training["distributed"]["backend"] == "gloo" and training["distributed"]["nodes"] == 1
    assert report["eval"]["after"]["count"] == 6  # evaluated sharded over both ranks, gathered on rank 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "destroy_process_group" not in log  # the ranks left the process group themselves


@pytest.mark.parametrize("name,value,expected", [
    ("KIT_RUNTIME", "podman", "KIT_RUNTIME=podman: expected apptainer, enroot, docker or host"),
    ("KIT_VENDOR", "intel", "KIT_VENDOR=intel: expected rocm, cuda or cpu"),
    ("KIT_RUNTIME", "apptainer", "KIT_IMAGE must name the image for KIT_RUNTIME=apptainer"),
])
def test_template_refuses_bad_settings_before_starting_anything(name, value, expected, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIT_", "SLURM_"))}
    env.update({name: value, "SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost"})
    done = subprocess.run(["bash", str(TEMPLATE)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert expected in done.stderr
