"""Several processes (``torchrun``): who is rank 0, barriers, reductions, gathering, shutdown. A no-op for one.

Plain ``torch.distributed`` rather than accelerate: the kit needs a handful of calls (init, barrier, all_reduce,
all_gather_object, DDP/FSDP wrapping in train.py), and its own loop already places tensors and decides who writes.

The process-group timeout is a recipe setting (``distributed.timeout_minutes``): every collective, barriers
included, fails after it instead of hanging forever, so it must exceed the longest stretch one rank can spend
alone (a checkpoint write on rank 0; evaluation is sharded over all ranks, see ``pipeline.evaluate.sharded``).
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from pipeline.core.compat import let_collective_threads_finish
from pipeline.core.errors import UserError


class LostRankError(UserError, RuntimeError):
    """A collective failed because other ranks went away (a node died, its network dropped, it was killed)."""


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # "nccl" (NCCL on CUDA, RCCL on ROCm) or "gloo"; None when one process
    enabled: bool = False
    # Every rank's node (torchrun's GROUP_RANK), host name and addresses, gathered once at setup: after a node
    # dies no collective works any more, and the message must still say which ranks were lost.
    peers: list[dict[str, Any]] = field(default_factory=list)
    lost: bool = False  # a collective failed for lost ranks: leave without destroy_process_group (may block)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        return self.sum(value, device) / self.world_size if self.enabled else value

    def sum(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def max(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def token_mean(self, loss_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """This rank's share of the mean loss over every rank's answer tokens.

        DDP and FSDP average gradients over ranks; a rank's own mean (``loss_sum / count``) would weight every
        rank equally however many answer tokens it had (" A" and " B" can encode to different lengths), so N
        processes would train differently from one with the same global batch. Scaled by ``world_size / all
        tokens``, the average is the one-process token mean.
        """
        if not self.enabled:
            return loss_sum / count.clamp(min=1)
        total = count.detach().to(torch.float64).clone()
        torch.distributed.all_reduce(total)
        return loss_sum * (self.world_size / total.clamp(min=1)).to(loss_sum.dtype)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def facts(self) -> dict[str, Any]:
        """For the report: how many processes, over which backend, how many nodes (distinct hosts' rank groups)."""
        if not self.enabled:
            return {"world_size": 1, "backend": None, "nodes": 1}
        nodes = len({p["node"] for p in self.peers}) if self.peers else \
            int(os.environ.get("GROUP_WORLD_SIZE", os.environ.get("SLURM_NNODES", "1")) or 1)
        return {"world_size": self.world_size, "backend": self.backend, "nodes": nodes}


def _this_node() -> dict[str, Any]:
    """Who this rank is on the network: torchrun's node index, the host name and what it resolves to."""
    host = socket.gethostname()
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except OSError:  # a host name that does not resolve: the message then names the host only
        addresses = []
    return {"rank": int(os.environ.get("RANK", "0")), "node": int(os.environ.get("GROUP_RANK", "0")),
            "host": host, "addresses": addresses}


# How the backends report a peer that went away; matched only for exceptions torch raises from a collective
# (torch >= 2.4 has DistError for them; torch 2.3, the images, raises plain RuntimeErrors).
_PEER_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe|Gloo|NCCL|ncclRemoteError|timed? ?out|"
                        r"Socket Timeout|DistBackendError|ProcessGroup", re.IGNORECASE)


def lost_ranks_error(exc: BaseException, dist: Dist, *, step: int, output_dir: Path,
                     last_checkpoint: Optional[Path] = None) -> Optional[LostRankError]:
    """A LostRankError naming the lost ranks and what to do, when ``exc`` is a collective failing for lost
    peers; None for anything else (which is then raised as it is)."""
    if not dist.enabled or isinstance(exc, UserError):
        return None
    dist_error = getattr(torch.distributed, "DistError", ())
    text = f"{type(exc).__name__}: {exc}"
    if not (isinstance(exc, dist_error) or (isinstance(exc, RuntimeError) and _PEER_GONE.search(text))):
        return None
    dist.lost = True
    mine = next((p for p in dist.peers if p["rank"] == dist.rank), {"node": None})
    named = [p for p in dist.peers if p["node"] != mine["node"] and any(a in text for a in p["addresses"])]
    suspects = named or [p for p in dist.peers if p["node"] != mine["node"]]
    by_node: dict[Any, list[dict[str, Any]]] = {}
    for peer in suspects:
        by_node.setdefault(peer["node"], []).append(peer)
    where = "; ".join(f"rank(s) {', '.join(str(p['rank']) for p in peers)} on node {node} "
                      f"({peers[0]['host']}{', ' + ', '.join(peers[0]['addresses']) if peers[0]['addresses'] else ''})"
                      for node, peers in sorted(by_node.items(), key=lambda kv: str(kv[0])))
    if named:
        lost = f"lost {where}"
    elif where:
        lost = f"lost a peer; ranks on other nodes: {where}"
    else:  # one node: another rank of it failed first (its own error is above) or was killed
        lost = "lost a peer on this node (another rank failed or was killed: see its error)"
    first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    resume = (f"the last complete checkpoint is {last_checkpoint}" if last_checkpoint
              else f"no complete checkpoint in {output_dir} yet")
    return LostRankError(
        f"rank {dist.rank} (node {mine['node']}), step {step + 1}: a collective failed: {lost} ({first_line}). "
        f"A node died, was killed or lost its network; {resume}: start every node again with --resume "
        f"(distributed.timeout_minutes bounds how long a rank waits for a silent peer)")


def setup_distributed(timeout_minutes: float = 30.0, *, group_of_one: bool = False) -> Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK), once.

    ``group_of_one``: also form a group of one rank when torchrun started a single process (FSDP needs a process
    group even then; ``torchrun --nproc-per-node 1`` runs the FSDP path on one GPU). Plain ``python`` never does.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    if world_size <= 1 and not (group_of_one and launched):
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend,
                                             timeout=datetime.timedelta(minutes=timeout_minutes))
    dist = Dist(rank=torch.distributed.get_rank(), world_size=world_size, local_rank=local_rank,
                backend=str(torch.distributed.get_backend()), enabled=True)
    dist.peers = dist.gather_objects(_this_node())
    return dist


def shutdown(dist: Dist) -> None:
    """Leave the process group cleanly (torch warns, and NCCL may hang at exit, when nobody calls this).

    Not after lost ranks: destroying a group whose peers are gone can block (NCCL), and the process exits anyway.
    """
    if dist.enabled and not dist.lost and torch.distributed.is_initialized():
        let_collective_threads_finish()
        torch.distributed.destroy_process_group()


def shard(count: int, dist: Dist) -> list[int]:
    """Indices ``0..count-1`` this rank takes: every ``world_size``-th one, starting at its rank.

    Strided rather than contiguous: a file sorted by length or topic still gives every rank a similar share.
    """
    return list(range(dist.rank, count, dist.world_size))


def rank_rng_states(dist: Dist) -> list[dict[str, Any]]:
    """Every rank's RNG state (python, numpy, torch, CUDA), in rank order; collective: all ranks must call it."""
    from pipeline.train.checkpoint import rng_state

    return dist.gather_objects(rng_state())


def reseed_new_rank(seed: int, step: int, dist: Dist) -> None:
    """A rank the checkpoint has no RNG state for (resumed on more processes): a distinct, reproducible seed."""
    from pipeline.train.optim import seed_everything

    seed_everything(seed + 1_000_003 * (dist.rank + 1) + step)
