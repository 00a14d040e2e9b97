"""The committed locks hold together, checked from the repository alone (no registry: CI passes on any day).

Re-resolving a lock against PyPI is not reproducible over time even at a fixed `--exclude-newer`: a registry's
view of upload dates is not frozen (image-cpu.lock re-resolved to another fonttools on 2026-12-06, issue 20).
So the registry-facing re-resolution is `make locks-check` (scripts/ci/docker-locks.sh --check), which names the
package that moved; here we check what cannot change with the registry's state:
- each lock's requirements from its .in files (any specifier, not just `==`) are satisfied by its pins;
- its dependency graph (uv's `# via` annotations) is closed: every pin is needed by a root or another pin, and every
  parent it names is pinned here or in the lock it was constrained by;
- an app lock never pins a package its torch lock provides (both are installed into one environment);
- the compare step of `--check` reports a moved pin by name and versions.
Headers (cutoff, in-sha256) and hashes are checked in test_pins.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .dockerfiles import ROOT
from .test_pins import LOCK_SOURCES, REQ, norm

SCRIPT = ROOT / "scripts" / "ci" / "docker-locks.sh"
# lock -> the lock it was resolved against with --constraint (scripts/ci/docker-locks.sh)
CONSTRAINED_BY = {"image-cuda.lock": "image-cuda-torch.lock", "image-rocm.lock": "image-cuda-torch.lock",
                  "image-cpu.lock": "image-cpu-torch.lock"}
# Left out of the torch locks on purpose (--no-emit-package): torch itself and CUDA-only wheels of PyPI's torch.
NOT_EMITTED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
TARGET_PYTHON = {"image-cpu.lock": "3.11", "image-cpu-torch.lock": "3.11"}


def entries(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, the parents uv recorded with `# via`)."""
    text = (REQ / lock).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    out = {}
    for block in blocks:
        head = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", block)
        if not head:
            continue
        via = re.search(r"# via (.*)", block)
        parents = [p.strip() for p in via.group(1).split(",")] if via else []
        out[norm(head.group(1))] = (head.group(2), parents)
    return out


def requirements_of(in_file: str) -> list[Requirement]:
    reqs = []
    for line in (REQ / in_file).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


@pytest.mark.parametrize("lock", sorted(LOCK_SOURCES))
def test_every_in_requirement_is_satisfied_by_the_lock(lock):
    locked = entries(lock)
    provided = entries(CONSTRAINED_BY[lock]) if lock in CONSTRAINED_BY else {}
    env = {"python_version": TARGET_PYTHON.get(lock, "3.10"), "sys_platform": "linux", "platform_machine": "x86_64"}
    for source in LOCK_SOURCES[lock]:
        for req in requirements_of(source):
            if req.marker and not req.marker.evaluate(env):
                continue
            name = norm(req.name)
            version = (locked.get(name) or provided.get(name) or (None,))[0]
            if version is None:
                assert NOT_EMITTED.match(name), f"{source} requires {req}, neither {lock} nor its constraints pin it"
                continue
            assert req.specifier.contains(version.split("+")[0], prereleases=True), (
                f"{source} requires {req}, {lock} pins {name}=={version}")


@pytest.mark.parametrize("lock", sorted(LOCK_SOURCES))
def test_the_dependency_graph_of_each_lock_is_closed(lock):
    locked = entries(lock)
    provided = set(entries(CONSTRAINED_BY[lock])) if lock in CONSTRAINED_BY else set()
    sources = {f"-r requirements/{name}" for name in LOCK_SOURCES[lock]}
    for name, (version, parents) in locked.items():
        if lock == "image-cpu-torch.lock" and name == "torch":
            continue  # appended by the script: the wheel file's own hash, not a resolution result
        assert parents, f"{lock}: {name}=={version} has no `# via`: nothing requires it (regenerate: make locks)"
        for parent in parents:
            if parent.startswith("-"):
                assert parent in sources, f"{lock}: {name} comes from {parent}, not one of this lock's .in files"
            else:
                known = norm(parent) in locked or norm(parent) in provided or NOT_EMITTED.match(norm(parent))
                assert known, f"{lock}: {name} is required by {parent}, which no lock of this image pins"


@pytest.mark.parametrize("lock", sorted(CONSTRAINED_BY))
def test_an_app_lock_leaves_its_torch_layer_to_the_torch_lock(lock):
    app, torch_layer = entries(lock), entries(CONSTRAINED_BY[lock])
    both = sorted(set(app) & set(torch_layer))
    assert not both, f"{lock} pins {both}, which {CONSTRAINED_BY[lock]} already installs below the app stage"


def test_the_script_refuses_unknown_lock_names(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--output-dir", str(tmp_path), "image-nope.lock"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "image-nope.lock is not a generated lock" in result.stderr
    assert not list(tmp_path.iterdir())


def test_the_registry_check_names_the_package_that_moved(tmp_path: Path):
    # The compare step of `make locks-check`, fed a re-resolution in which fonttools moved (the 2026-12-06 case).
    fresh = tmp_path / "image-cpu.lock"
    shutil.copy(REQ / "image-cpu.lock", fresh)
    shutil.copy(REQ / "image-build.lock", tmp_path / "image-build.lock")
    old = entries("image-cpu.lock")["fonttools"][0]
    fresh.write_text(fresh.read_text().replace(f"fonttools=={old} ", "fonttools==9.9.9 "))
    result = subprocess.run(["bash", str(SCRIPT), "--compare", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 1, result.stderr
    assert f"image-cpu.lock: fonttools {old} -> 9.9.9" in result.stderr
    assert "image-build.lock: same" in result.stderr
    same = subprocess.run(["bash", str(SCRIPT), "--compare", str(REQ)], cwd=ROOT, capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
