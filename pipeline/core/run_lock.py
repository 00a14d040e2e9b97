"""One owner per output folder: an advisory lock held for the whole run.

Two runs writing one ``train.output_dir`` destroy each other (the second deleted the first's half-written
checkpoint as stale, rewrote its demo data, and the last writer's report won). So a run takes an exclusive
``fcntl.flock`` on ``<output_dir>/.run.lock`` before it touches anything there and keeps it until it ends.

The kernel drops a flock when its holder dies, however it dies (SIGKILL, OOM killer, power loss), so a lock file
left by a dead run is no obstacle: the next run simply gets the lock, and reads who held it last to say so.
The holder writes its PID, host and start time into the file, so a refused run can name who is in the way.
Linux NFS turns flock into POSIX byte-range locks, which NFSv4 servers enforce between hosts; some other network
file systems silently grant every lock, which is why the holder's host is printed too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from pipeline.core.errors import OutputError

LOCK_NAME = ".run.lock"


class OutputInUseError(OutputError):
    """Another live process holds the output folder's lock."""


def holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def read_holder(lock_path: Path) -> Optional[dict[str, Any]]:
    try:
        text = Path(lock_path).read_text(encoding="utf-8")
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: Optional[dict[str, Any]]) -> str:
    if not holder:
        return "another process (it has not written its PID yet)"
    return f"PID {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started_at')})"


@contextlib.contextmanager
def hold(output_dir: Path, *, enabled: bool = True) -> Iterator[Optional[dict[str, Any]]]:
    """Hold ``<output_dir>/.run.lock`` for the block; yield the previous holder's info if a dead run left it.

    Raises ``OutputInUseError`` naming the live holder when the lock is taken. ``enabled=False`` (ranks other
    than 0 of a multi-GPU run, which share rank 0's folder) holds nothing.
    """
    if not enabled:
        yield None
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock_path = output_dir / LOCK_NAME
    # O_RDWR without O_TRUNC: a refused run must not wipe the holder's details.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"{output_dir} is in use by {describe(read_holder(lock_path))}, which holds {lock_path}. "
                "Wait for that run to end or stop it, or set train.output_dir to another folder"
            ) from None
        previous = read_holder(lock_path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        os.fsync(fd)
        try:
            yield previous
        finally:
            # Emptied, not deleted: deleting would let a third run lock a fresh inode while a second waits on
            # the old one. An empty file means "ended cleanly"; details left behind mean the holder died.
            os.ftruncate(fd, 0)
            # Unlocked explicitly, not only by close: a child forked during the run (seen on the torch 2.3 stack)
            # shares this open file description, and the lock would live as long as that child does.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
