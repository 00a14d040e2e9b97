"""The parts of Dockerfile.rocm / Dockerfile.cuda that need no vendor base, built for real on local bases:
the runtime's CA-store step (on a base with no CA store, like plain Ubuntu) and the wheel export of `make
wheels-<vendor>` (with a local folder standing in for the compile stage, which needs the vendor toolchain).
The app stage and its runtime user are Dockerfile.app, built and run for real in test_image_build.py."""

from __future__ import annotations

import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest

from .dockerfiles import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NO_CA_BASE = "ckit-ci/no-ca-store:bookworm"
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def cpu_base(docker_client) -> str:
    result = run(["bash", str(ROOT / "scripts/ci/docker-cpu-base.sh")])
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def no_ca_base(cpu_base) -> str:
    """The local Debian base without its CA store: what plain ubuntu:22.04 looks like to the runtime stages."""
    dockerfile = f"FROM {cpu_base}\nRUN dpkg --purge --force-depends ca-certificates && rm -f {SYSTEM_CA}\n"
    result = run(["docker", "buildx", "build", "--network", "host", "-t", NO_CA_BASE, "--load", "-"],
                 input=dockerfile)
    assert result.returncode == 0, result.stderr[-3000:]
    return NO_CA_BASE


@pytest.mark.parametrize("vendor", ["rocm", "cuda"])
def test_runtime_gets_a_ca_store_on_a_base_without_one(vendor, no_ca_base, cpu_base, docker_client, tmp_path):
    marker = f"ckit-secret-{uuid.uuid4().hex}"
    bundle = tmp_path / "ca.pem"
    bundle.write_text((SYSTEM_CA.read_text() if SYSTEM_CA.is_file() else "") + f"\n{marker}\n")
    tag = f"ckit-ci/{vendor}-runtime-certs:test"
    key = "ROCM" if vendor == "rocm" else "CUDA"
    devel = "ROCM_BASE" if vendor == "rocm" else "CUDA_DEVEL_BASE"
    result = run(["docker", "buildx", "build", "--network", "host", "--progress", "plain", "-f", f"Dockerfile.{vendor}",
                  "--target", "runtime-certs", "--build-arg", f"{key}_RUNTIME_BASE={no_ca_base}",
                  "--build-arg", f"{devel}={cpu_base}", "--secret", f"id=ca_bundle,src={bundle}",
                  # Every FROM is expanded, used or not: ROCm's torch switch too (no default, like the bases).
                  *(["--build-arg", "ROCM_TORCH=source"] if vendor == "rocm" else []),
                  "-t", tag, "--load", "."], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    store = run(["docker", "run", "--rm", "--network", "host", tag, "sh", "-c",
                 f"test -s {SYSTEM_CA} && grep -c 'BEGIN CERTIFICATE' {SYSTEM_CA}"])
    assert store.returncode == 0 and int(store.stdout.strip()) > 50, store.stdout + store.stderr
    config = docker_client.images.get(tag).attrs["Config"]
    assert not [e for e in config["Env"] or [] if e.startswith("DEBIAN_FRONTEND=")], "build-only setting in the image"
    tail = b""
    for chunk in docker_client.api.get_image(tag, chunk_size=8 << 20):
        assert marker.encode() not in tail + chunk, "the CA secret was written into a layer"
        tail = (tail + chunk)[-len(marker):]
    docker_client.images.remove(tag)


@pytest.mark.parametrize("vendor", ["rocm", "cuda"])
def test_make_wheels_exports_the_wheels_stage(vendor, cpu_base, tmp_path):
    stand_in = tmp_path / "build"
    (stand_in / "wheels").mkdir(parents=True)
    wheel = stand_in / "wheels" / "flash_attn-0.0.0-cp310-cp310-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("flash_attn/__init__.py", "")
    # Every base of the file is the local one (never pulled: the compile stages are replaced, not built).
    bases = ([f"ROCM_BASE={cpu_base}", f"ROCM_RUNTIME_BASE={cpu_base}"] if vendor == "rocm"
             else [f"CUDA_DEVEL_BASE={cpu_base}", f"CUDA_RUNTIME_BASE={cpu_base}"])
    # ROCm (ROCM_TORCH=source, the default): the compiled torch is exported too; its stage is replaced the same way.
    torch_stage = tmp_path / "torch-wheel"
    torch_stage.mkdir()
    torch_wheel = torch_stage / "torch-2.3.1-cp310-cp310-linux_x86_64.whl"
    with zipfile.ZipFile(torch_wheel, "w") as archive:
        archive.writestr("torch/__init__.py", "")
    replaced = f"--build-context build={stand_in}" + (f" --build-context torch-wheel={torch_stage}"
                                                      if vendor == "rocm" else "")
    dist = tmp_path / "dist"
    result = run(["make", "-s", f"wheels-{vendor}", *bases, f"DIST={dist}",
                  f"BUILD_FLAGS={replaced} --network host --progress plain"], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    exported = dist / f"wheels-{vendor}" / wheel.name
    assert exported.read_bytes() == wheel.read_bytes()
    expected = sorted([wheel.name] + ([torch_wheel.name] if vendor == "rocm" else []))
    assert sorted(p.name for p in exported.parent.iterdir()) == expected, "only the wheels are exported"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.rocm", "Dockerfile.cuda", "Dockerfile.cpu", "Dockerfile.app"])
def test_a_direct_build_without_make_fails_early_and_says_why(dockerfile, docker_client):
    result = run(["docker", "buildx", "build", "--network", "host", "-f", dockerfile, "."], cwd=ROOT)
    assert result.returncode != 0
    assert "build_through_make" in result.stderr and "unset" in result.stderr, result.stderr[-2000:]
