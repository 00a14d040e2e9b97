"""`make save` / `make load` (scripts/airgap/image-tarball.sh): the tarball, its sha256 and the recorded image ID.

Proved on a one-file image made with `docker import` (no registry, no build): what is tested is the moving, not
the image. Needs the private engine: eval "$(bash scripts/ci/docker-engine.sh)".
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker
IMAGE = "ckit-test/airgap-tarball:1"


def _engine_or_skip() -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("no Docker engine reachable: run `eval \"$(bash scripts/ci/docker-engine.sh)\"` first")


def _make(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args, f"IMAGE={IMAGE}"], cwd=ROOT, capture_output=True, text=True,
                          check=check)


@pytest.fixture
def tiny_image():
    _engine_or_skip()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"airgap tarball test\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(["docker", "import", "--change", "LABEL io.github.clinical-finetune-kit.vendor=cpu", "-", IMAGE],
                   input=buf.getvalue(), check=True, capture_output=True)
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", IMAGE],
                              capture_output=True, text=True, check=True).stdout.strip()
    yield image_id
    subprocess.run(["docker", "image", "rm", "-f", IMAGE], capture_output=True)


def test_save_then_load_keeps_the_recorded_id(tiny_image, tmp_path):
    _make("save", f"DIST={tmp_path}")
    name = "clinical-finetune-kit-latest-cpu"
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["id"] == tiny_image and record["labels"]["io.github.clinical-finetune-kit.vendor"] == "cpu"
    assert (tmp_path / f"{name}.tar.gz.sha256").read_text().split()[0] == record["tarball_sha256"]
    assert not list(tmp_path.glob("*.tmp"))
    subprocess.run(["docker", "image", "rm", "-f", IMAGE], check=True, capture_output=True)
    loaded = _make("load", f"DIST={tmp_path}")
    assert f"loaded {IMAGE} ({tiny_image}" in loaded.stdout


def test_load_refuses_a_damaged_tarball(tiny_image, tmp_path):
    _make("save", f"DIST={tmp_path}")
    tarball = tmp_path / "clinical-finetune-kit-latest-cpu.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:-10])
    result = _make("load", f"DIST={tmp_path}", check=False)
    assert result.returncode != 0 and "does not match" in result.stderr


def test_load_refuses_a_different_image_under_the_name(tiny_image, tmp_path):
    _make("save", f"DIST={tmp_path}")
    record_path = tmp_path / "clinical-finetune-kit-latest-cpu.json"
    record = json.loads(record_path.read_text())
    record["id"] = "sha256:" + "1" * 64
    record_path.write_text(json.dumps(record))
    result = _make("load", f"DIST={tmp_path}", check=False)
    assert result.returncode != 0 and "recorded sha256:111" in result.stderr

