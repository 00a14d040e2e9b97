"""Several processes (``torchrun --nproc-per-node N``): who is rank 0, barriers, reductions. A no-op for one.

Plain ``torch.distributed`` rather than accelerate: the kit needs four calls (init, barrier, all_reduce, DDP
wrapping in train.py), and its own loop already places tensors and decides who writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def sum(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item())


def setup_distributed() -> Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, LOCAL_RANK), once."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=torch.distributed.get_rank(), world_size=world_size, enabled=True)
