"""Atomic writes: a reader (or a resumed run) sees the old file or folder or the complete new one, never half.

Everything the kit writes goes through here: a temporary name beside the target in the same folder (so the
final rename is one rename on one file system), its data fsync'ed before the rename and the parent folder
fsync'ed after it, so a power cut cannot leave a renamed-but-empty file.

Replacing a folder cannot be one rename (``rename`` refuses a non-empty target), so it takes three steps, each of
which leaves something whole behind::

    dest -> .dest.old      (the old version, aside)
    .dest.<rand>.tmp -> dest
    remove .dest.old

A process killed between the first two steps leaves no ``dest`` but a complete ``.dest.old``; ``recover(dest)``
(run by the next owner of the folder) renames it back. Temporary names all start with a dot and end in ``.tmp``
(or ``.old``), so ``clean_temporaries`` can tell a killed writer's leftovers from real outputs. Only the process
that owns the folder (the pipeline holds a lock on it for the whole run) may call it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

TMP_SUFFIX = ".tmp"
ASIDE_SUFFIX = ".old"
# Below this much free space a failed write is reported as a full disk even when the library that failed
# (torch.save's C++ writer, safetensors' Rust writer) did not pass the OS error on.
_FULL_DISK_BYTES = 1 << 20


def _reached(point: str, dest: Path) -> None:
    """Named points between the steps of a write to ``dest`` ("folder:aside", ...): a no-op. Tests replace it
    in a child process to kill that process at exactly this point instead of racing a signal against the write."""


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX needs the folder itself fsync'ed)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # pragma: no cover - some file systems refuse fsync on folders
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (files first, so a folder's entries point at written data)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through a temporary file, fsync'ed before and after the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _reached("write_text:written", path)
        os.replace(tmp, path)
        _reached("write_text:replaced", path)
        fsync_dir(path.parent)
    except BaseException as exc:
        full = _disk_full_error(exc, path)
        Path(tmp).unlink(missing_ok=True)
        if full is not None:
            raise full from exc
        raise


def aside_path(dest: Path) -> Path:
    dest = Path(dest)
    return dest.parent / f".{dest.name}{ASIDE_SUFFIX}"


@contextlib.contextmanager
def folder(dest: Path, *, prefix: Optional[str] = None, expected_bytes: int = 0) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the block succeeds it replaces ``dest``.

    On any error (or interruption) the temporary folder is removed and ``dest`` is left as it was. The prefix
    starts with a dot so that readers listing the parent (``--resume`` looking for checkpoints) skip it.
    ``expected_bytes`` (about what the block writes) lets a failure be recognized as a full disk even when the
    writer removed its partial file itself before failing.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        _reached("folder:written", dest)
        replace_folder(tmp, dest)
    except BaseException as exc:
        full = _disk_full_error(exc, dest, expected_bytes)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from exc
        raise


def replace_folder(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``; at every instant ``dest`` or its aside copy is a complete version."""
    new, dest = Path(new), Path(dest)
    aside = aside_path(dest)
    if dest.exists():
        if aside.exists():  # a leftover: dest is whole, so the aside copy is an even older version
            shutil.rmtree(aside)
        os.rename(dest, aside)
        fsync_dir(dest.parent)
        _reached("folder:aside", dest)
    os.rename(new, dest)
    fsync_dir(dest.parent)
    _reached("folder:replaced", dest)
    if aside.exists():
        shutil.rmtree(aside)
        fsync_dir(dest.parent)


def recover(dest: Path) -> Optional[str]:
    """Finish a folder replace that a killed process left half-way; return what was done, or None.

    ``dest`` missing + aside present: the kill came between the two renames; the aside copy is the last complete
    version and goes back. Both present: the new version is in place; the aside copy is deleted.
    """
    dest = Path(dest)
    aside = aside_path(dest)
    if not aside.exists():
        return None
    if dest.exists():
        shutil.rmtree(aside)
        return f"removed {aside.name} (the replace had finished)"
    os.rename(aside, dest)
    fsync_dir(dest.parent)
    return f"restored {dest.name} from {aside.name} (a replace was interrupted)"


def clean_temporaries(parent: Path) -> list[str]:
    """Recover interrupted folder replaces and delete half-written temporaries in ``parent``; return their names.

    Only for the folder's owner: a temporary of a writer that is still running looks the same as a dead one's.
    """
    parent = Path(parent)
    done: list[str] = []
    if not parent.is_dir():
        return done
    for entry in sorted(parent.iterdir()):
        name = entry.name
        if name.startswith(".") and name.endswith(ASIDE_SUFFIX) and entry.is_dir():
            action = recover(parent / name[1:-len(ASIDE_SUFFIX)])
            if action:
                done.append(action)
        elif name.startswith(".") and name.endswith(TMP_SUFFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            done.append(f"removed {name}")
    return done


def free_bytes(path: Path) -> int:
    """Bytes this process may still write on ``path``'s file system (root may use the reserved blocks too)."""
    stats = os.statvfs(path)
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return blocks * stats.f_frsize


def _disk_full_error(exc: BaseException, dest: Path, expected_bytes: int = 0) -> Optional[OSError]:
    """``OSError(ENOSPC)`` naming ``dest`` for a writer's failure on a full disk, or None.

    Some writers hide the OS error: torch.save raises ``RuntimeError: [enforce fail at inline_container.cc]``
    and safetensors its own error type (after deleting its partial file). When no OSError is chained and the
    file system is (nearly) full, or has less room than the write needed, the disk is the cause; measured before
    our temporary is removed, which frees the space again.
    """
    if not isinstance(exc, Exception) or os_error_in_chain(exc) is not None:
        return None
    try:
        free = free_bytes(Path(dest).parent)
    except OSError:
        return None
    if free < max(_FULL_DISK_BYTES, expected_bytes):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" ({type(exc).__name__} while writing)",
                       str(dest))
    return None


def os_error_in_chain(exc: BaseException) -> Optional[OSError]:
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
