"""Length-grouped, seeded, resumable batches for step-based training, and right-padding collation.

MedQA prompts run from ~60 to ~800 tokens (median ~200): random batches would spend a large share of compute on
padding. Each epoch is a seeded permutation cut into "mega-batches" of ``mega_batches`` global batches; inside
one, examples are sorted by length, so a batch holds neighbours of similar length; then the order of the batches
is shuffled again, so training does not see short examples first and long ones last. (The same idea as the HF
Trainer's ``group_by_length`` sampler; written here because it must also be infinite, sharded and resumable.)

Sharding for data-parallel runs: a "global batch" of ``batch_size * world_size`` examples is split into
``world_size`` slices of ``batch_size``; rank r always takes slice r. Every rank therefore gets the same number
of batches, of similar lengths (fewer stragglers), and no two ranks see the same example in the same step.

Everything is a function of (seed, epoch), so ``state_dict()`` needs only the epoch and the position in it:
resuming reproduces exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import torch

from pipeline.core.errors import ResumeError
from pipeline.data.prompts import IGNORE_INDEX


class LengthGroupedBatches:
    """Infinite iterator of index lists (one batch for this rank per ``next()``), deterministic from ``seed``."""

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        *,
        seed: int,
        group_by_length: bool = True,
        rank: int = 0,
        world_size: int = 1,
        mega_batches: int = 50,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of world_size {world_size}")
        if mega_batches < 1:
            raise ValueError(f"mega_batches must be at least 1, got {mega_batches}")
        self.global_batch = batch_size * world_size
        if len(lengths) < self.global_batch:
            raise ValueError(
                f"{len(lengths)} examples cannot fill one batch of {batch_size} on each of {world_size} rank(s); "
                "expected at least batch_size * world_size examples"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.rank = rank
        self.world_size = world_size
        self.mega_batches = mega_batches
        # The remainder of each epoch's permutation is dropped (a short last batch would change the per-step
        # token count and, under DDP, leave ranks unequal); it differs per epoch, so nothing is skipped for good.
        self.batches_per_epoch = len(self.lengths) // self.global_batch
        self.epoch = 0
        self.position = 0  # index of the next batch within the epoch
        self._plan: list[list[int]] | None = None

    def _epoch_plan(self, epoch: int) -> list[list[int]]:
        """All global batches of one epoch, in the order they are served."""
        rng = random.Random(f"{self.seed}:{epoch}")  # string seeds hash stably across runs and Python versions
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        order = order[: self.batches_per_epoch * self.global_batch]
        if self.group_by_length:
            chunk = self.mega_batches * self.global_batch
            grouped: list[int] = []
            for start in range(0, len(order), chunk):
                grouped.extend(sorted(order[start:start + chunk], key=lambda i: -self.lengths[i]))
            order = grouped
        batches = [order[i:i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        if self.group_by_length:
            rng.shuffle(batches)
            # The batch with the epoch's longest example goes first: an out-of-memory then shows at the first
            # step, not hours into a run.
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        if self._plan is None:
            self._plan = self._epoch_plan(self.epoch)
        batch = self._plan[self.position]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position, self._plan = self.epoch + 1, 0, None
        return batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_examples": len(self.lengths),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "group_by_length": self.group_by_length,
            "mega_batches": self.mega_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` left off; refuses a state from a differently configured batcher.

        A changed seed, data size, batch size or world size would silently give other batches than the
        interrupted run, so resuming with one is an error naming the setting.
        """
        for key in ("seed", "num_examples", "group_by_length", "mega_batches"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ResumeError(
                    f"cannot resume batches: checkpoint has {key}={state[key]!r}, this run has {key}={mine!r}; "
                    "expected the same data and batch settings as the interrupted run"
                )
        # The plan depends on the global batch alone, so a run may resume on another number of processes as long
        # as batch_size * world_size is unchanged (e.g. 2 ranks x 4 -> 1 rank x 8).
        saved = int(state.get("batch_size", self.batch_size)) * int(state.get("world_size", self.world_size))
        if saved != self.global_batch:
            raise ValueError(
                f"cannot resume batches: checkpoint has global batch {saved} (batch_size {state.get('batch_size')} x "
                f"world_size {state.get('world_size')}), this run has {self.global_batch} (batch_size "
                f"{self.batch_size} x world_size {self.world_size}); set train.batch_size so that batch_size x "
                "number of processes is unchanged"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"cannot resume batches: position {position} is outside 0..{self.batches_per_epoch - 1}")
        self.epoch, self.position, self._plan = epoch, position, None


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids``/``labels`` to the longest example; padding gets attention 0 and label -100.

    Right padding keeps every real token at the same position it has alone, so positions (RoPE) and causal
    attention of real tokens are unchanged by padding.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = example["input_ids"]
        if len(example["labels"]) != len(ids):
            raise ValueError(f"example {row}: {len(ids)} input_ids but {len(example['labels'])} labels, expected equal")
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(example["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
