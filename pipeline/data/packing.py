"""One optimizer step's sequences -> micro-batches that fit a token budget, padded or packed, built on the host.

The batcher hands over the sequences of one optimizer step (``train.batch_size * train.grad_accum`` per device);
how they are cut into micro-steps is a memory question, not a numerics one, because the loss is normalized over
the answer tokens of the whole step (``pipeline/train/step.py``). So the cut follows the memory plan:

- padded: sequences sorted by length, filled greedily into micro-batches whose padded size (rows x longest row)
  stays within ``token_budget``: neighbours in length share a micro-batch, so padding stays small without
  changing which sequences make up the step;
- packed: sequences laid end to end in rows of at most ``row_width`` tokens (first-fit decreasing), with
  ``position_ids`` restarting at 0 for each sequence and no attention mask. transformers (4.54+) reads restarting
  position ids as packed sequences: FlashAttention 2 runs them as variable-length attention, SDPA and eager get a
  block-diagonal causal mask, so no token ever attends to another example.

Everything the loss needs (the flat positions whose next token is an answer token, and those tokens) is computed
here on CPU tensors, so the training step never has to ask the GPU for a count or a boolean index (each such
question is a host synchronization that stalls the launch queue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from pipeline.data.prompts import IGNORE_INDEX


@dataclass
class MicroBatch:
    """Tensors for one forward/backward, all on CPU until ``to(device)``."""

    input_ids: torch.Tensor  # [rows, width]
    attention_mask: Optional[torch.Tensor]  # [rows, width] when padded; None when packed
    position_ids: Optional[torch.Tensor]  # [rows, width] when packed
    answer_index: torch.Tensor  # flat indices into rows*width of positions whose NEXT token is an answer token
    answer_target: torch.Tensor  # the answer tokens at those positions + 1
    real_tokens: int  # non-padding tokens
    sequences: int
    # Variable-length attention (pipeline/model/varlen.py): sequence boundaries in the flattened micro-step and the
    # longest sequence, known here on the host so the attention kernel needs no GPU->host sync to find them.
    cu_seqlens: Optional[torch.Tensor] = None  # int32 [sequences + 1]
    max_seqlen: int = 0

    def inputs(self, device: torch.device) -> dict[str, Any]:
        out = {"input_ids": self.input_ids, "answer_index": self.answer_index, "answer_target": self.answer_target}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        if self.cu_seqlens is not None:
            out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = self.cu_seqlens
        moved: dict[str, Any] = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        if self.cu_seqlens is not None:
            moved["max_length_q"] = moved["max_length_k"] = self.max_seqlen
        return moved


@dataclass
class StepBatches:
    micro: list[MicroBatch] = field(default_factory=list)

    @property
    def answer_tokens(self) -> int:
        return sum(int(m.answer_target.numel()) for m in self.micro)

    @property
    def real_tokens(self) -> int:
        return sum(m.real_tokens for m in self.micro)

    @property
    def padded_tokens(self) -> int:
        return sum(int(m.input_ids.numel()) for m in self.micro)


def _version(text: str) -> tuple[int, int]:
    parts = text.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def packing_unsupported(attention: str) -> Optional[str]:
    """None when this transformers/torch keeps packed sequences apart with ``attention``, else why not.

    FlashAttention 2 turns restarting position ids into variable-length attention (transformers 4.44+). For SDPA
    and eager, transformers builds the block-diagonal mask from the position ids in 5.x, but 4.57 does so only
    with torch >= 2.6 (``masking_utils``): on the images' torch 2.3 packed rows would silently attend across
    sequences, so packing falls back to padded micro-batches there.
    """
    import transformers

    if attention == "flash_attention_2":
        return None
    tf, th = _version(transformers.__version__), _version(torch.__version__)
    if tf >= (5, 0) or (tf >= (4, 54) and th >= (2, 6)):
        return None
    return (f"transformers {transformers.__version__} with torch {torch.__version__.split('+')[0]} does not mask "
            f"packed sequences apart for {attention} attention (needs transformers 5, or torch >= 2.6, or "
            "FlashAttention 2)")


def split_by_budget(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped longest-first so that rows x longest row <= ``token_budget`` per group.

    A sequence longer than the budget still gets a group of its own (the memory plan makes the budget at least
    the longest sequence, so this only happens when a caller asks for a smaller budget on purpose).
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be at least 1, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def pack_rows(lengths: list[int], row_width: int) -> list[list[int]]:
    """First-fit decreasing: indices into ``lengths`` per row, each row's total <= ``row_width``."""
    if row_width < 1:
        raise ValueError(f"row_width must be at least 1, got {row_width}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_width - lengths[i])
    return rows


def _answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Position t predicts token t+1: the loss reads hidden[t] wherever labels[t+1] is an answer token.
    width = labels.shape[1]
    nxt = labels[:, 1:]
    r, t = (nxt != IGNORE_INDEX).nonzero(as_tuple=True)
    return r * width + t, nxt[r, t]


def padded_batch(examples: list[dict[str, list[int]]], pad_id: int) -> MicroBatch:
    """Right-padded rows (real tokens keep the positions they have alone), as ``batching.collate`` pads."""
    from pipeline.data.batching import collate

    batch = collate(examples, pad_id)
    index, target = _answer_positions(batch["labels"])
    return MicroBatch(batch["input_ids"], batch["attention_mask"], None, index, target,
                      real_tokens=sum(len(e["input_ids"]) for e in examples), sequences=len(examples))


def packed_batch(rows: list[list[dict[str, list[int]]]], pad_id: int, *, width: int = 0,
                 varlen: bool = False) -> MicroBatch:
    """Rows of sequences laid end to end; padding at a row's end is a sequence of its own (positions from 0).

    ``width`` (at least the longest row) lets callers round the width up so that shapes repeat. ``varlen`` adds
    the boundaries of every sequence (and of each row's padding) in the flattened rows, for variable-length
    attention.
    """
    width = max([width] + [sum(len(e["input_ids"]) for e in row) for row in rows])
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            ids, lab = e["input_ids"], e["labels"]
            if len(lab) != len(ids):
                raise ValueError(f"packed row {r}: {len(ids)} input_ids but {len(lab)} labels, expected equal")
            n = len(ids)
            input_ids[r, at:at + n] = torch.tensor(ids, dtype=torch.long)
            labels[r, at:at + n] = torch.tensor(lab, dtype=torch.long)
            # A sequence's first token has no position before it in its own sequence (padded rows never predict
            # it either): without this the previous sequence's last token would be trained to predict it.
            labels[r, at] = IGNORE_INDEX
            position_ids[r, at:at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    index, target = _answer_positions(labels)
    batch = MicroBatch(input_ids, None, position_ids, index, target,
                       real_tokens=sum(len(e["input_ids"]) for row in rows for e in row),
                       sequences=sum(len(row) for row in rows))
    if varlen:
        lengths: list[int] = []
        for row in rows:
            lengths += [len(e["input_ids"]) for e in row]
            rest = width - sum(len(e["input_ids"]) for e in row)
            if rest:
                lengths.append(rest)  # the row's padding attends only to itself, as its restarting positions say
        batch.cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        batch.max_seqlen = max(lengths)
    return batch


def balanced_rows(lengths: list[int], rows: int) -> list[list[int]]:
    """Longest-first into the row with the fewest tokens so far: ``rows`` rows of nearly equal length.

    First-fit decreasing fills rows to the width and leaves the last one part-empty (the micro-step's shape is
    still rows x width); balancing the same number of rows makes the widest row, and so the padded shape, smaller.
    """
    out: list[list[int]] = [[] for _ in range(rows)]
    load = [0] * rows
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(rows), key=lambda r: load[r])
        out[r].append(i)
        load[r] += lengths[i]
    return [row for row in out if row]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def plan_step(
    examples: list[dict[str, list[int]]], pad_id: int, *, token_budget: int, packing: bool, row_width: int = 2048,
    balance: bool = False, round_to: int = 1, varlen: bool = False,
) -> StepBatches:
    """Cut one optimizer step's ``examples`` into micro-batches within ``token_budget`` (padded or packed).

    Packed only: ``varlen`` puts each micro-step's sequences in ONE row (variable-length attention keeps them
    apart by their boundaries; the micro-steps are balanced by tokens), padded only up to ``round_to`` with a
    segment of its own; otherwise rows of at most ``row_width``, ``balance`` evens out each micro-step's rows and
    ``round_to`` rounds its width up. Rounding makes a run meet few distinct shapes: each new one costs kernel
    plans the first time.
    """
    lengths = [len(e["input_ids"]) for e in examples]
    step = StepBatches()
    if not packing:
        for group in split_by_budget(lengths, token_budget):
            step.micro.append(padded_batch([examples[i] for i in group], pad_id))
        return step
    if varlen:
        for group in _token_groups(lengths, token_budget):
            # Rounded too: the varlen kernel builds no plan per shape, but cuBLAS picks GEMM kernels per new
            # token count: on an H100 at 8/step, unrounded varlen (a new length nearly every step) had a median
            # step 35 ms slower than rounded rows (docs/benchmarks.md, round two).
            total = sum(lengths[i] for i in group)
            width = min(round_up(total, round_to), max(token_budget, total))
            step.micro.append(packed_batch([[examples[i] for i in group]], pad_id, width=width, varlen=True))
        return step
    width = max(min(row_width, token_budget), max(lengths))
    rows = pack_rows(lengths, width)
    per_micro = max(1, token_budget // width)
    for start in range(0, len(rows), per_micro):
        chunk_rows = rows[start:start + per_micro]
        if balance and len(chunk_rows) > 1:
            flat = [i for row in chunk_rows for i in row]
            even = [[flat[j] for j in row] for row in balanced_rows([lengths[i] for i in flat], len(chunk_rows))]
            if max(sum(lengths[i] for i in row) for row in even) <= width:
                chunk_rows = even
        chunk = [[examples[i] for i in row] for row in chunk_rows]
        widest = max(sum(lengths[i] for i in row) for row in chunk_rows)
        step.micro.append(packed_batch(chunk, pad_id, width=min(round_up(widest, round_to), max(width, widest))))
    return step


def _token_groups(lengths: list[int], token_budget: int) -> list[list[int]]:
    """As few groups as keep every group's total within ``token_budget``, balanced by tokens (longest first)."""
    total = sum(lengths)
    groups = max(1, -(-total // max(1, token_budget)))
    while True:
        out = balanced_rows(lengths, groups)
        if all(sum(lengths[i] for i in g) <= token_budget for g in out) or groups >= len(lengths):
            return out
        groups += 1


__all__ = ["MicroBatch", "StepBatches", "balanced_rows", "pack_rows", "packed_batch", "packing_unsupported",
           "padded_batch", "plan_step", "round_up", "split_by_budget"]
