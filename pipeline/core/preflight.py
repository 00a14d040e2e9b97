"""Checks on the output folder before any minute of training is spent, and one-line messages for I/O failures.

Without them an output_dir that is a file, a read-only folder (found only at the adapter save, after training)
and a full disk (``RuntimeError: [enforce fail at inline_container.cc ...]``) all ended in a traceback.

- ``check_output_dir``: the folder exists or can be made, is a folder, and a file can be written in it; before
  any model loads.
- ``check_space``: free space against an estimate of what the run will write, once the trainable parameter
  count is known (after the model loads, before step 1).
- ``output_errors``: any OSError of a kind the user fixes (disk full, read-only, permission) becomes an
  ``OutputError`` that says what to free or change; other errors pass untouched (they are bugs).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kit import atomic
from pipeline.core.errors import OutputError, UserError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
# Optimizer state bytes per trainable parameter: AdamW keeps two fp32 moments; the 8-bit variants two uint8
# moments plus per-block scales (bitsandbytes blocks of 256 values: ~2.03 bytes).
_OPTIMIZER_BYTES = {"adamw": 8.0, "adamw_8bit": 2.1, "paged_adamw_8bit": 2.1}
_EVAL_BYTES_PER_QUESTION = 1024  # a predictions.jsonl row with scores for up to 5 options, generously
_MARGIN = 1.2


def check_output_dir(output_dir: Path, *, key: str = "train.output_dir") -> None:
    """Make sure ``output_dir`` is (or can become) a folder we can write in; raise OutputError otherwise."""
    output_dir = Path(output_dir)
    for parent in [output_dir, *output_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{key} {output_dir}: {parent} is a file, expected a folder; "
                              f"set {key} to a folder path")
        if parent.exists():
            break
    with output_errors(output_dir, what="create the output folder"):
        output_dir.mkdir(parents=True, exist_ok=True)
    # access() answers for the real uid and ignores read-only mounts for root; only a real write tells.
    with output_errors(output_dir, what="write in the output folder"):
        atomic.write_text(output_dir / ".write-probe", "probe\n")
        (output_dir / ".write-probe").unlink()


@dataclass
class SpaceEstimate:
    adapter_bytes: int
    checkpoint_bytes: int
    checkpoints_on_disk: int
    eval_bytes: int

    @property
    def total(self) -> int:
        # +1 adapter: a replace keeps the old version aside until the new one is in place.
        return int(_MARGIN * (self.checkpoints_on_disk * self.checkpoint_bytes + 2 * self.adapter_bytes
                              + self.eval_bytes))


def estimate_space(*, trainable_params: int, param_bytes: int, optimizer: str, steps: int, start_step: int,
                   checkpoint_every: int, keep_checkpoints: int, eval_questions: int) -> SpaceEstimate:
    """What the rest of a run writes: checkpoints (adapter + optimizer state), the final adapter, eval outputs.

    ``param_bytes`` is the stored size of one trainable value (4 for fp32 LoRA weights, 2 for bf16).
    """
    adapter = trainable_params * param_bytes
    checkpoint = adapter + int(trainable_params * _OPTIMIZER_BYTES.get(optimizer, 8.0))
    to_write = (steps // checkpoint_every - start_step // checkpoint_every) if checkpoint_every else 0
    # keep_checkpoints=N holds N, and N+1 while the next is written before the oldest goes.
    on_disk = min(to_write, keep_checkpoints + 1) if keep_checkpoints > 0 else to_write
    return SpaceEstimate(adapter, checkpoint, max(on_disk, 0), 2 * eval_questions * _EVAL_BYTES_PER_QUESTION)


def check_space(output_dir: Path, estimate: SpaceEstimate, *, free: Optional[int] = None) -> None:
    free = atomic.free_bytes(Path(output_dir)) if free is None else free
    if estimate.total > free:
        raise OutputError(
            f"train.output_dir {output_dir}: this run needs about {_size(estimate.total)} "
            f"({estimate.checkpoints_on_disk} checkpoint(s) of {_size(estimate.checkpoint_bytes)} "
            f"adapter + optimizer state, the final adapter of {_size(estimate.adapter_bytes)}, evaluation outputs) "
            f"but only {_size(free)} is free there. Free space on that disk, lower train.keep_checkpoints or raise "
            "train.checkpoint_every, or set train.output_dir to a larger disk"
        )


@contextlib.contextmanager
def output_errors(output_dir: Path, *, what: str = "write the run's outputs") -> Iterator[None]:
    """Turn OSErrors the user can fix (full disk, read-only, no permission) into one-line OutputErrors."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        cause = atomic.os_error_in_chain(exc)
        if cause is None or cause.errno not in _NO_SPACE | _NOT_WRITABLE:
            raise
        where = cause.filename or output_dir
        if cause.errno in _NO_SPACE:
            hint = (f"the disk holding {output_dir} is full ({_free_text(output_dir)} free): free space there, lower "
                    "train.keep_checkpoints, or set train.output_dir to a larger disk, then rerun with --resume")
        elif cause.errno == errno.EROFS:
            hint = f"{output_dir} is on a read-only file system: set train.output_dir to a writable folder"
        else:
            hint = (f"no permission to write in {output_dir} as uid {os.geteuid()}: fix its owner/permissions or "
                    "set train.output_dir to a folder you own")
        raise OutputError(f"cannot {what} ({where}: {cause.strerror}): {hint}") from exc


def _free_text(path: Path) -> str:
    try:
        return _size(atomic.free_bytes(Path(path)))
    except OSError:
        return "unknown"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover
