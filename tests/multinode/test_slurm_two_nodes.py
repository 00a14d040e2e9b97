"""slurm/finetune.sbatch on a two-node Slurm cluster: one slurmctld and two slurmd, each slurmd in its own network
namespace with its own NodeName and address (scripts/ci/slurm-cluster.sh start DIR TAG SUBNET), KIT_RUNTIME=host,
gloo over interface kit0. The job trains as one process with the same global batch (losses, adapter, sharded
evaluation, 2 nodes and 4 ranks in the report); a user's mistakes end fast with a message naming the setting."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multinode.conftest import SUBNET, assert_same_predictions, four_rank_args
from tests.pipeline.test_ddp import _assert_same_run

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "slurm" / "finetune.sbatch"
CLUSTER = ROOT / "scripts" / "ci" / "slurm-cluster.sh"
pytestmark = [pytest.mark.multinode, pytest.mark.slurm, pytest.mark.slow]
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


@pytest.fixture(scope="module")
def cluster(nodes, tmp_path_factory):
    for cmd in ("sbatch", "slurmctld", "slurmd", "munged"):
        if shutil.which(cmd) is None:
            pytest.skip(f"{cmd} is not installed (scripts/ci/slurm-install.sh installs Debian's slurm-wlm and munge)")
    folder = tmp_path_factory.mktemp("slurm2")
    env = dict(os.environ, KIT_SLURM_CTLD_PORT="16827", KIT_SLURM_D_PORT="16828")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(folder), nodes.tag, SUBNET], env=env,
                             capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"))
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], capture_output=True, timeout=60)


def _client(nodes, cmd: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    """A Slurm client command on node 0 (slurmctld listens only inside the namespaces)."""
    return subprocess.run(["ip", "netns", "exec", nodes.ns(0), *cmd], env=env, capture_output=True, text=True,
                          timeout=60, **kwargs)


def _submit(nodes, env: dict, folder: Path, args: list[str], *, node_count: int = 2, **settings: str):
    env = dict(env, KIT_RUNTIME="host", KIT_PYTHON=sys.executable, KIT_NPROC_PER_NODE="2", KIT_DIR=str(ROOT),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GLOO_SOCKET_IFNAME="kit0",
               NCCL_SOCKET_IFNAME="kit0", **settings)
    return _client(nodes, ["sbatch", "--parsable", "--nodes", str(node_count), "--time", "10", "--output",
                           str(folder / "job-%j.out"), str(TEMPLATE), "--recipe",
                           str(ROOT / "recipes" / "demo-cpu.yaml"), *args], env, cwd=folder)


def _wait(nodes, job: str, env: dict, timeout_s: float) -> tuple[str, float]:
    """(final state, seconds waited); cancels the job and fails when it outlives ``timeout_s``."""
    t0 = time.monotonic()
    state = "UNKNOWN"
    while time.monotonic() - t0 < timeout_s:
        for word in _client(nodes, ["scontrol", "show", "job", job], env).stdout.split():
            if word.startswith("JobState="):
                state = word.split("=", 1)[1]
        if state in FINAL:
            return state, time.monotonic() - t0
        time.sleep(1)
    _client(nodes, ["scancel", job], env)
    pytest.fail(f"job {job} still {state} after {timeout_s} s")


def _job(nodes, cluster, folder: Path, args: list[str], timeout_s: float, **settings: str) -> tuple[str, float, str]:
    submitted = _submit(nodes, cluster, folder, args, **settings)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    state, took = _wait(nodes, job, cluster, timeout_s)
    return state, took, (folder / f"job-{job}.out").read_text(errors="replace")


def test_two_node_job_trains_and_evaluates_as_one_process(nodes, cluster, tiny_model_dir, reference, tmp_path):
    out = tmp_path / "run"
    args = four_rank_args(tiny_model_dir, reference, out, f"data.eval={reference['eval']}", "eval.scoring=cloze")
    state, _, log = _job(nodes, cluster, tmp_path, args, timeout_s=400, KIT_RDZV_PORT="29621")
    assert state == "COMPLETED", log[-4000:]
    assert "2 node(s) x 2 process(es), runtime host, rendezvous " + nodes.host(0) + ":29621" in log
    report = json.loads((out / "report.json").read_text())
    training = report["training"]
    assert training["world_size"] == 4 and training["distributed"]["nodes"] == 2
    _assert_same_run(report, out, reference["report"], reference["out"])
    assert_same_predictions(out, reference["out"])


def test_more_nodes_than_the_partition_has_is_refused_at_submission(nodes, cluster, tmp_path):
    submitted = _submit(nodes, cluster, tmp_path, [], node_count=3)
    assert submitted.returncode != 0
    assert "Node count specification invalid" in submitted.stderr, submitted.stderr


def test_a_rendezvous_port_in_use_fails_fast_naming_the_setting(nodes, cluster, tiny_model_dir, reference,
                                                                 tmp_path):
    # Something else listens on node 0's rendezvous port (a process in node 0's namespace, killed by pid after).
    squatter = nodes.popen(0, [sys.executable, "-c", "import socket, time; s = socket.socket(); "
                               f"s.bind(('{nodes.address(0)}', 29622)); s.listen(); print('up', flush=True); "
                               "time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "up"
        args = four_rank_args(tiny_model_dir, reference, tmp_path / "run")
        state, took, log = _job(nodes, cluster, tmp_path, args, timeout_s=120, KIT_RDZV_PORT="29622")
    finally:
        squatter.kill()
        squatter.communicate()
    assert state == "FAILED" and took < 90, (state, took, log[-3000:])
    assert f"KIT_RDZV_PORT=29622 is already in use on the rendezvous host {nodes.host(0)}" in log, log[-3000:]


def test_a_node_that_cannot_reach_node_0_fails_within_the_wait_naming_address_and_setting(
        nodes, cluster, tiny_model_dir, reference, tmp_path):
    # Node 0's second address (its "data network") refused on node 1 alone; Slurm still reaches both nodes.
    data_address = f"{SUBNET}.101"
    route = ["ip", "-n", nodes.ns(1), "route", "add", "prohibit", f"{data_address}/32"]
    subprocess.run(route, check=True, timeout=30)
    try:
        args = four_rank_args(tiny_model_dir, reference, tmp_path / "run")
        state, took, log = _job(nodes, cluster, tmp_path, args, timeout_s=150, KIT_RDZV_PORT="29623",
                                KIT_RDZV_HOST=f"{nodes.host(0)}-data", KIT_RDZV_WAIT="15")
    finally:
        route[4] = "del"  # ip -n NS route del prohibit ADDR
        subprocess.run(route, check=True, timeout=30)
    assert state == "FAILED" and took < 100, (state, took, log[-3000:])
    expected = (f"node {nodes.host(1)} cannot reach the rendezvous on node 0 at {nodes.host(0)}-data:29623 "
                f"(address {data_address}) within 15 s (KIT_RDZV_WAIT)")
    assert expected in log, log[-3000:]
    assert "GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME" in log


def test_nothing_here_listens_outside_the_namespaces():
    # The cluster's ports (16827/16828) and rendezvous ports were opened inside the namespaces only.
    for port in (16827, 16828, 29621):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
