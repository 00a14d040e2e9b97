"""Multi-node torchrun for real: two "hosts" (network namespaces joined by a veth pair, each its own address,
host name and interface), each running the ``finetune-node`` compose service's torchrun line (c10d rendezvous on
node 0, 2 ranks per node, gloo over interface kit0) with the kit's recipe on the tiny model.

Checked against one process with the same global batch (8 = 4 ranks x 2): the losses and final adapter (the kit's
tolerance, tests/pipeline/test_ddp.py), the evaluation sharded over the four ranks, the report's 2 nodes and 4
ranks; then node 1 killed mid-step (every process of its namespace, SIGKILL): node 0 exits non-zero within
``distributed.timeout_minutes`` naming the lost ranks, the last complete checkpoint stays, and ``--resume`` on two
nodes, and on one process with the same global batch, gives the uninterrupted run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.multinode.conftest import CHECKPOINT_EVERY, STEPS, assert_same_predictions, four_rank_args
from tests.pipeline.test_ddp import _assert_same_run, _env, _finetune_cmd

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multinode, pytest.mark.slow]


def compose_node_command(values: dict[str, str], module: str = "pipeline") -> list[str]:
    """The ``finetune-node`` service's entrypoint + command from compose.yaml, its ``${VAR:-default}`` filled from
    ``values`` (as compose would from the environment), run by this interpreter instead of the image's."""
    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["finetune-node"]

    def fill(word: str) -> str:
        return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: values.get(m[1], m[2] or ""), str(word))

    words = [fill(w) for w in service["entrypoint"] + service["command"]]
    assert words[0] == "python"
    words[0] = sys.executable
    if module != "pipeline":
        words[words.index("pipeline")] = module
    return words


def node_environment() -> list[str]:
    return list(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["finetune-node"]["environment"])


def _start_two_nodes(nodes, port: int, args: list[str], *, module: str = "pipeline", extra_env=None,
                     torchrun_options: tuple[str, ...] = ()):
    values = {"KIT_NNODES": "2", "KIT_NPROC_PER_NODE": "2", "KIT_RDZV_HOST": nodes.host(0), "KIT_RDZV_PORT": str(port),
              "KIT_RDZV_ID": f"kit-test-{port}", "KIT_RECIPE": str(ROOT / "recipes" / "demo-cpu.yaml")}
    cmd = compose_node_command(values, module) + args
    if torchrun_options:  # before "-m MODULE": options of torchrun itself
        at = cmd.index("-m", 3)
        cmd = cmd[:at] + list(torchrun_options) + cmd[at:]
    # The compose service passes these through; here they name the namespaces' interface.
    env = dict(_env(), GLOO_SOCKET_IFNAME="kit0", NCCL_SOCKET_IFNAME="kit0", **(extra_env or {}))
    return [nodes.popen(n, cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for n in (0, 1)]


def _finish(procs, timeout: float = 420) -> list[str]:
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"a node did not finish within {timeout} s:\n{out[-3000:]}")
        outputs.append(out)
    return outputs


def test_the_compose_node_service_passes_the_settings_the_test_uses():
    env = node_environment()
    assert "GLOO_SOCKET_IFNAME" in env and "NCCL_SOCKET_IFNAME" in env
    cmd = compose_node_command({"KIT_NNODES": "2", "KIT_RDZV_HOST": "node0"})
    assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--rdzv-backend") + 1] == "c10d"
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "node0:29500"


def test_four_ranks_on_two_nodes_train_and_evaluate_as_one_process(nodes, tiny_model_dir, reference, tmp_path):
    out = tmp_path / "two-nodes"
    args = four_rank_args(tiny_model_dir, reference, out, f"data.eval={reference['eval']}", "eval.scoring=cloze")
    outputs = _finish(_start_two_nodes(nodes, 29611, args))
    report = json.loads((out / "report.json").read_text())
    training = report["training"]
    assert training["world_size"] == 4 and training["distributed"]["nodes"] == 2, outputs[0][-2000:]
    assert training["distributed"]["backend"] == "gloo"
    _assert_same_run(report, out, reference["report"], reference["out"])
    # Evaluation sharded over the four ranks (6 questions: shares 2, 2, 1, 1), gathered on rank 0.
    assert_same_predictions(out, reference["out"])
    assert report["eval"]["after"]["count"] == 6
    assert outputs[0].count(f"step {STEPS}/{STEPS}") == 1 and f"step {STEPS}/{STEPS}" not in outputs[1]


def test_a_node_dies_mid_step_node_0_names_the_lost_ranks_and_resume_gives_the_uninterrupted_run(
        nodes, tiny_model_dir, reference, tmp_path):
    out, mark = tmp_path / "killed", tmp_path / "node1-in-step"
    timeout_minutes = 0.5
    args = four_rank_args(tiny_model_dir, reference, out, f"distributed.timeout_minutes={timeout_minutes}")
    stall_step = CHECKPOINT_EVERY + 2  # inside step 5: checkpoint-3 is complete, step 4 done, step 5 half begun
    procs = _start_two_nodes(nodes, 29612, args, module="tests.multinode.stall",
                             extra_env={"KIT_TEST_STALL_NODE": "1", "KIT_TEST_STALL_STEP": str(stall_step),
                                        "KIT_TEST_STALL_MARK": str(mark)})
    try:
        deadline = time.monotonic() + 400
        while not mark.exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "node 1 never reached the stall"
            time.sleep(0.2)
        time.sleep(1.0)  # node 0's ranks are inside step 5 now, waiting for node 1's gradients
        killed_at = time.monotonic()
        assert nodes.kill(1), "no process in node 1's namespace"
        out0, _ = procs[0].communicate(timeout=timeout_minutes * 60 + 60)
        elapsed = time.monotonic() - killed_at
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert procs[0].returncode != 0
    assert elapsed < timeout_minutes * 60 + 30, f"node 0 took {elapsed:.0f} s to give up"
    print(out0[-3000:])  # what node 0 said, in the test log
    assert "lost rank(s) 2, 3 on node 1" in out0, out0[-4000:]
    assert f"the last complete checkpoint is {out / f'checkpoint-{CHECKPOINT_EVERY}'}" in out0
    complete = sorted(p.name for p in out.glob("checkpoint-*") if (p / "COMPLETE").is_file())
    assert complete == [f"checkpoint-{CHECKPOINT_EVERY}"]
    state = json.loads((out / f"checkpoint-{CHECKPOINT_EVERY}" / "state.json").read_text())
    assert state["step"] == CHECKPOINT_EVERY
    one_node = tmp_path / "resumed-on-one-node"
    shutil.copytree(out, one_node)

    # --resume on both nodes (a new rendezvous id: a new job): the uninterrupted run.
    _finish(_start_two_nodes(nodes, 29613, args + ["--resume"]))
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["start_step"] == CHECKPOINT_EVERY and report["training"]["world_size"] == 4
    _assert_same_run(report, out, reference["report"], reference["out"])

    # --resume on one process with the same global batch (1 x 8): the same. (The same timeout: the resume
    # policy counts distributed.* keys as recipe changes to allow explicitly.)
    cmd = _finetune_cmd(1, tiny_model_dir, reference["train"], one_node, STEPS,
                        f"train.checkpoint_every={CHECKPOINT_EVERY}",
                        f"distributed.timeout_minutes={timeout_minutes}") + ["--resume"]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((one_node / "report.json").read_text())
    assert report["training"]["start_step"] == CHECKPOINT_EVERY and report["training"]["world_size"] == 1
    _assert_same_run(report, one_node, reference["report"], reference["out"])
