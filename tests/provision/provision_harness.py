"""Helpers for the chroot test: prepared roots, host data pointing at the fake repositories, running the pyinfra CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the provision package

from . import (
    chroot_root,
    fake_repo,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")
INVENTORY = REPO_ROOT / "provision" / "inventory.py"
DEPLOY = REPO_ROOT / "provision" / "deploy.py"
GPU_USER = "alice"


def chroot_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, debootstrap, dpkg inside the root)"
    for tool in ("debootstrap", "dpkg-deb", "apt-ftparchive", "gpg"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/ci/provision-deps.sh installs it)"
    if not PYINFRA.exists():
        return f"pyinfra is not installed next to {sys.executable}"
    return None


def prepare_root(root: Path, repos: fake_repo.FakeRepos) -> Path:
    """A fresh bookworm root whose only apt source is the distro stand-in, with one ordinary user."""
    chroot_root.extract_root(root)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    for source in (root / "etc/apt/sources.list.d").glob("*"):
        source.unlink()
    (root / "etc/apt/sources.list.d/distro.list").write_text(
        f"deb [trusted=yes] {repos.base_url}/distro {fake_repo.SUITE} main\n"
    )
    subprocess.run(["chroot", str(root), "useradd", "--no-create-home", GPU_USER], check=True)
    return root


def _chroot_host_data(repos: fake_repo.FakeRepos) -> dict:
    """What every test node shares: the chroot's suite and switches, the GPU user, Docker's fake repository."""
    base = repos.base_url
    return {
        "os_codename": fake_repo.SUITE,
        "in_container_or_chroot": True,
        "gpu_users": [GPU_USER],
        "docker_repo_url": f"{base}/docker/linux/ubuntu",
        "docker_key_url": f"{base}/{fake_repo.KEY_PATHS['docker']}",
        # No GPU and no Docker engine inside a chroot: the verification steps have their own tests.
        "verify_gpus": False,
        "verify_kit_image": False,
    }


def amd_host_data(repos: fake_repo.FakeRepos) -> dict:
    base = repos.base_url
    return {
        **_chroot_host_data(repos),
        "rocm_version": fake_repo.ROCM_VERSION,
        "amd_repo_base_url": f"{base}/amd",
        "amd_key_url": f"{base}/{fake_repo.KEY_PATHS['amd']}",
        "amd_key_sha256": repos.key_sha256["amd"],
        "docker_key_sha256": repos.key_sha256["docker"],
        "tune_iommu_passthrough": True,
        "tune_pci_realloc_off": True,
        "cpu_vendor": "amd",  # a chroot has no /proc/cpuinfo to read it from
        "tune_numa_balancing_off": True,
        "tune_disable_cpu_idle_state": 2,
    }


def nvidia_host_data(repos: fake_repo.FakeRepos) -> dict:
    base = repos.base_url
    return {
        **_chroot_host_data(repos),
        "nvidia_driver_branch": fake_repo.NVIDIA_BRANCH,
        "nvidia_fabricmanager": True,
        "cuda_repo_url": f"{base}/cuda/ubuntu2204/x86_64",
        "cuda_key_url": f"{base}/{fake_repo.KEY_PATHS['cuda']}",
        "container_toolkit_repo_url": f"{base}/nvct/stable/deb/$(ARCH)",
        "container_toolkit_key_url": f"{base}/{fake_repo.KEY_PATHS['nvct']}",
    }


def write_hosts_file(path: Path, groups: dict[str, list]) -> Path:
    path.write_text(yaml.safe_dump(groups))
    return path


@dataclass
class Totals:
    """pyinfra's "Grand total" row: operations planned, that changed something, that failed, that changed nothing."""

    operations: int
    changed: int
    errors: int
    unchanged: int


def grand_total(output: str) -> Totals:
    match = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    assert match, f"no results table in pyinfra's output:\n{output[-3000:]}"
    return Totals(*(0 if value == "-" else int(value) for value in match.groups()))


def run_pyinfra(hosts_file: Path, *extra: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PROVISION_HOSTS"] = str(hosts_file)
    env["NO_COLOR"] = "1"
    return subprocess.run(
        # No --no-wait: with it pyinfra 3.10 exits 0 even when an operation failed on a host (a failing host's
        # greenlet raises, but the host is never recorded as failed). Users run it without, as here.
        [str(PYINFRA), *(() if "--dry" in extra else ("-y",)), str(INVENTORY), str(DEPLOY), *extra],
        check=False,  # the callers assert on the exit status and the output
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
