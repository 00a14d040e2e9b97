"""kit/atomic.py: a process killed at any point of a write leaves the old or the new version, and the next owner
of the folder cleans up. Kills are injected at the exact point (a child process replaces atomic._reached with
os._exit), not raced with a signal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kit import atomic

ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from kit import atomic
    point, target = sys.argv[1], Path(sys.argv[2])
    atomic._reached = lambda where, dest: os._exit(137) if where == point else None
    if target.suffix == ".json":
        atomic.write_text(target, "new\\n")
    else:
        with atomic.folder(target) as tmp:
            (tmp / "weights").write_text("new")
""")


def _kill_during_write(point: str, target: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", _CHILD, point, str(target)], env=env, cwd=ROOT,
                          timeout=60).returncode


def _version(target: Path) -> str:
    return (target / "weights").read_text() if target.is_dir() else target.read_text().strip()


@pytest.mark.parametrize("point,expected", [
    ("write_text:written", "old"), ("write_text:replaced", "new"),
])
def test_file_write_killed_leaves_old_or_new(tmp_path, point, expected):
    target = tmp_path / "report.json"
    target.write_text("old\n")
    assert _kill_during_write(point, target) == 137
    assert _version(target) == expected
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "report.json"]
    assert all(n.startswith(".report.json.") and n.endswith(".tmp") for n in leftovers)
    atomic.clean_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and _version(target) == expected


@pytest.mark.parametrize("point,seen_before_recovery,expected", [
    ("folder:written", "old", "old"),   # new folder complete, not yet renamed
    ("folder:aside", None, "old"),      # old moved aside, new not in yet: no adapter until recovered
    ("folder:replaced", "new", "new"),  # new in place, old aside copy not yet deleted
])
def test_folder_replace_killed_leaves_old_or_new(tmp_path, point, seen_before_recovery, expected):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    assert _kill_during_write(point, target) == 137
    if seen_before_recovery is None:
        assert not target.exists() and (tmp_path / ".adapter.old" / "weights").read_text() == "old"
    else:
        assert _version(target) == seen_before_recovery
    done = atomic.clean_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"], done
    assert _version(target) == expected


def test_first_write_of_a_folder_killed_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "adapter"
    assert _kill_during_write("folder:written", target) == 137
    assert not target.exists()
    atomic.clean_temporaries(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_writes_are_fsynced(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    with atomic.folder(tmp_path / "adapter") as tmp:
        (tmp / "a.bin").write_bytes(b"x")
    before = len(synced)
    atomic.write_text(tmp_path / "report.json", "{}")
    # folder: its file, the folder itself, the parent after the rename; file: the data, the parent.
    assert before >= 3 and len(synced) - before >= 2


def test_clean_temporaries_leaves_real_outputs(tmp_path):
    for name in ("report.json", "adapter", "checkpoint-2", ".run.lock"):
        (tmp_path / name).mkdir() if "." not in name or name.startswith("checkpoint") else (tmp_path / name).touch()
    (tmp_path / ".report.json.abc.tmp").write_text("half")
    (tmp_path / ".adapter.xyz.tmp").mkdir()
    assert len(atomic.clean_temporaries(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "adapter", "checkpoint-2", "report.json"]
