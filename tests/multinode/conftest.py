"""Two "nodes" on this machine: network namespaces joined by a veth pair (scripts/ci/netns-nodes.sh), and the
tiny random Llama the runs train. Everything a test starts runs inside those namespaces (or on loopback), and the
fixture kills every process in them by pid and removes them, also when a test fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
NETNS = ROOT / "scripts" / "ci" / "netns-nodes.sh"
SUBNET = "10.251.0"  # a private /24 that exists only between the two namespaces this fixture makes


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces (scripts/ci/netns-nodes.sh)"
    for cmd in ("ip", "unshare"):
        if shutil.which(cmd) is None:
            return f"{cmd} is not installed (iproute2, util-linux)"
    return None


class Nodes:
    """The two namespaces: node n is ``kit-TAG-n`` with host name ``kit-TAG-n`` at SUBNET.(n+1), interface kit0."""

    def __init__(self, tag: str):
        self.tag = tag

    def ns(self, n: int) -> str:
        return f"kit-{self.tag}-{n}"

    def host(self, n: int) -> str:
        return self.ns(n)

    def address(self, n: int) -> str:
        return f"{SUBNET}.{n + 1}"

    def popen(self, n: int, cmd: list[str], **kwargs) -> subprocess.Popen:
        """``cmd`` as node n: in its network namespace, with its own host name (a private UTS namespace), so
        torchrun's c10d rendezvous sees node 0 as the endpoint's host on node 0 and nowhere else."""
        wrapped = ["ip", "netns", "exec", self.ns(n), "unshare", "--uts", "sh", "-c",
                   'hostname "$0" && exec "$@"', self.host(n), *cmd]
        return subprocess.Popen(wrapped, **kwargs)

    def pids(self, n: int) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns(n)], capture_output=True, text=True, timeout=30).stdout
        return [int(p) for p in out.split()]

    def kill(self, n: int) -> list[int]:
        """SIGKILL every process of node n, by pid: its torchrun agent and all its ranks."""
        import signal

        killed = self.pids(n)
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return killed


@pytest.fixture(scope="session")
def nodes():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    tag = f"t{os.getpid() % 100000}"
    up = subprocess.run(["bash", str(NETNS), "up", tag, SUBNET], capture_output=True, text=True, timeout=60)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield Nodes(tag)
    finally:
        # Kills whatever is left in the namespaces (by pid) and deletes them, whatever the test did.
        subprocess.run(["bash", str(NETNS), "down", tag], capture_output=True, timeout=60)


STEPS, CHECKPOINT_EVERY = 6, 3


def finetune_args(cmd: list[str]) -> list[str]:
    """``python -m pipeline finetune --recipe R <these>``: the arguments after the recipe."""
    return cmd[cmd.index("--recipe") + 2:]


@pytest.fixture(scope="session")
def reference(tiny_model_dir, tmp_path_factory):
    """One process, global batch 8, STEPS steps, checkpoints every CHECKPOINT_EVERY, evaluated on 6 questions:
    what the four ranks on two nodes must reproduce (torchrun here, Slurm in test_slurm_two_nodes.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.pipeline.recipe_helpers import write_questions
    from tests.pipeline.test_ddp import _env, _finetune_cmd

    folder = tmp_path_factory.mktemp("multinode")
    train = write_questions(folder / "train.jsonl", 24)
    evaluation = write_questions(folder / "eval.jsonl", 6, offset=5)
    out = folder / "one"
    cmd = _finetune_cmd(1, tiny_model_dir, train, out, STEPS, f"data.eval={evaluation}", "eval.scoring=cloze",
                        f"train.checkpoint_every={CHECKPOINT_EVERY}")
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(train=train, eval=evaluation, out=out, report=json.loads((out / "report.json").read_text()))


def four_rank_args(tiny_model_dir: Path, reference: dict, out: Path, *extra: str) -> list[str]:
    """The reference run's settings for 4 ranks (train.batch_size 2: the same global batch of 8)."""
    from tests.pipeline.test_ddp import _finetune_cmd

    return finetune_args(_finetune_cmd(4, tiny_model_dir, reference["train"], out, STEPS,
                                       f"train.checkpoint_every={CHECKPOINT_EVERY}", *extra))


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]


def assert_same_predictions(out: Path, reference_out: Path) -> None:
    mine, alone = predictions(out), predictions(reference_out)
    assert [p["predicted"] for p in mine] == [p["predicted"] for p in alone]
    for a, b in zip(mine, alone, strict=True):
        assert list(a["scores"].values()) == pytest.approx(list(b["scores"].values()), abs=1e-3)
