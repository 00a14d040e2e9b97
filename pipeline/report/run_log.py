"""The run's training history as a TensorBoard event log (``<run>/tensorboard/events.out.tfevents.*``).

Every training tool reads this format (TensorBoard, Weights & Biases and MLflow importers, VS Code), so a run can
be set beside other runs without a server: ``tensorboard --logdir runs/`` wherever TensorBoard is installed.

Written with tensorboardX rather than ``torch.utils.tensorboard``: the latter needs the ``tensorboard`` package
itself (the web server: grpcio, werkzeug, markdown and a platform binary, tens of MB in every image), while
tensorboardX is a small, maintained writer of the same files needing only protobuf. The log is written once,
from the history the report holds, into a temporary folder renamed into place (never half a log), so the
training loop stays free of logging calls. ``read_scalars`` reads such a file back by the TFRecord framing
(length, masked CRC-32C, payload, masked CRC-32C) and checks every checksum.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kit import atomic

FOLDER = "tensorboard"


def write_event_log(run_dir: Path, scalars: dict[str, Sequence[tuple[int, float]]],
                    walltimes: dict[int, float] | None = None) -> Path:
    """Write ``scalars`` (tag -> [(step, value)]) into ``run_dir/tensorboard``, replacing any earlier log.

    ``walltimes`` (step -> POSIX time) gives TensorBoard's "relative time" axis the real training time; steps
    without one are stamped with the time of writing.
    """
    from tensorboardX import SummaryWriter

    walltimes = walltimes or {}
    with atomic.folder(Path(run_dir) / FOLDER) as tmp:
        writer = SummaryWriter(logdir=str(tmp), flush_secs=3600)
        try:
            for tag, points in scalars.items():
                for step, value in points:
                    writer.add_scalar(tag, float(value), global_step=int(step), walltime=walltimes.get(int(step)))
        finally:
            writer.close()
    return Path(run_dir) / FOLDER


def step_walltimes(training: dict[str, Any], started_at: str | None) -> dict[int, float]:
    """step -> POSIX time: the run's start plus the summed durations of the steps before (where all are known)."""
    start = _timestamp(started_at)
    seconds = training.get("step_seconds") or []
    if start is None or len(seconds) != len(training.get("losses") or []):
        return {}
    out, total = {}, start
    for step, s in enumerate(seconds, start=1):
        total += s
        out[step] = total
    return out


def training_scalars(training: dict[str, Any], eval_points: Sequence[dict[str, Any]] = ()) -> dict[str, list]:
    """The scalars of a run: loss, learning rate, tokens/s per step, and accuracy where it was evaluated.

    The history covers every step from 1 (a resumed run restores it from the checkpoint), so step i is index i-1.
    """
    out: dict[str, list] = {
        "train/loss": [(i, v) for i, v in enumerate(training.get("losses") or [], start=1)],
        "train/learning_rate": [(i, v) for i, v in enumerate(training.get("lrs") or [], start=1)],
        "train/tokens_per_second": list(tokens_per_second(training).items()),
        "eval/accuracy": [(p["step"], p["value"]) for p in eval_points],
    }
    return {tag: points for tag, points in out.items() if points}


def tokens_per_second(training: dict[str, Any]) -> dict[int, float]:
    """step -> non-padding tokens per second, for the last steps whose tokens and duration are both recorded.

    A run resumed from a checkpoint of older code may lack durations for its first steps; the lists align at the end.
    """
    tokens = training.get("step_tokens") or []
    seconds = training.get("step_seconds") or []
    n = min(len(tokens), len(seconds))
    last = int(training.get("steps") or len(tokens))
    return {last - n + i + 1: t / max(s, 1e-9) for i, (t, s) in enumerate(zip(tokens[-n:] if n else [],
                                                                              seconds[-n:] if n else [], strict=False))}


def read_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of an event file (or of the newest one in a folder); ValueError on a bad record."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("events.out.tfevents.*"))
        if not files:
            raise ValueError(f"{path}: no events.out.tfevents.* file, expected a TensorBoard log folder")
        path = files[-1]
    data = path.read_bytes()
    out: dict[str, list[tuple[int, float]]] = {}
    offset, number = 0, 0
    while offset < len(data):
        number += 1
        if offset + 12 > len(data):
            raise ValueError(f"{path}: record {number} is cut short (header), expected a complete TFRecord")
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        if length_crc != _masked(crc32c(header)):
            raise ValueError(f"{path}: record {number}: length checksum mismatch, expected a TFRecord event file")
        if offset + 16 + length > len(data):
            raise ValueError(f"{path}: record {number} is cut short (payload), expected a complete TFRecord")
        payload = data[offset + 12:offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
        if payload_crc != _masked(crc32c(payload)):
            raise ValueError(f"{path}: record {number}: payload checksum mismatch")
        offset += 16 + length
        event = Event.FromString(payload)
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def _masked(crc: int) -> int:
    # TFRecord's masking of CRC-32C (tensorflow/core/lib/hash/crc32c.h): rotate right by 15, add a constant.
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _timestamp(started_at: str | None) -> float | None:
    if not started_at:
        return None
    try:
        return dt.datetime.fromisoformat(started_at).timestamp()
    except ValueError:
        return None
