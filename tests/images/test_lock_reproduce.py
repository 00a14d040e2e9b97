"""Two resolutions from the same commit give the same lock: re-resolve committed locks and compare byte for byte.

scripts/ci/docker-locks.sh resolves with uv's `--exclude-newer` at stack.env's LOCK_EXCLUDE_NEWER, so a release
published after the locks were made cannot change them. Needs PyPI (reachable here and in CI) and installs the
pinned uv into .venv-tools on first use, hence `slow` (it runs in `make test`, not in `make test-fast`).
"""

from __future__ import annotations

import subprocess

import pytest

from .dockerfiles import ROOT, STACK

SCRIPT = ROOT / "scripts" / "ci" / "docker-locks.sh"


@pytest.mark.slow
# image-cpu.lock: the largest resolution (the CPU app stack against the torch lock's constraints); image-build.lock:
# the GPU compile stages' tools. Each takes about a second once uv is installed.
@pytest.mark.parametrize("lock", ["image-cpu.lock", "image-build.lock"])
def test_re_resolving_a_lock_reproduces_the_committed_file(lock, tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--output-dir", str(tmp_path), lock], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == [lock], "only the named lock may be written"
    fresh, committed = (tmp_path / lock).read_text(), (ROOT / "requirements" / lock).read_text()
    if fresh != committed:
        diff = subprocess.run(["diff", "-u", str(ROOT / "requirements" / lock), str(tmp_path / lock)],
                              capture_output=True, text=True).stdout
        pytest.fail(f"requirements/{lock} does not re-resolve to itself at LOCK_EXCLUDE_NEWER="
                    f"{STACK['LOCK_EXCLUDE_NEWER']} (stack.env):\n{diff[:4000]}")


def test_the_script_refuses_unknown_lock_names(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--output-dir", str(tmp_path), "image-nope.lock"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "image-nope.lock is not a generated lock" in result.stderr
    assert not list(tmp_path.iterdir())
