"""Atomic writes: a reader (or a resumed run) sees the old file or folder or the complete new one, never half.

Everything the pipeline writes goes through here: a temporary name beside the target in the same folder (so the
final ``os.replace`` is one rename on one file system), removed again if writing fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through a temporary file, flushed to disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def folder(dest: Path, *, prefix: Optional[str] = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the block succeeds it replaces ``dest`` in one rename.

    On any error (or interruption) the temporary folder is removed and ``dest`` is left as it was. The prefix
    starts with a dot so that readers listing the parent (``--resume`` looking for checkpoints) skip it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
