"""The real deploy, run the way users run it (`pyinfra provision/inventory.py provision/deploy.py`), against two
debootstrap roots through pyinfra's @chroot connector: one MI300X node (with every tuning switch on) and one
NVIDIA node, in parallel. Vendor repositories are the signed fakes from fake_repo.py on 127.0.0.1.

What cannot happen in a chroot (kernel, systemd, reboot, GPUs, Docker engine) is covered by
test_provision_operations.py.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.deploys.tuning import CPUIDLE_UNIT, GRUB_DROP_IN, SYSCTL_FILE

from . import fake_repo
from .provision_harness import (
    GPU_USER,
    Totals,
    amd_host_data,
    grand_total,
    nvidia_host_data,
    prepare_root,
    run_pyinfra,
    write_hosts_file,
)

pytestmark = [pytest.mark.chroot, pytest.mark.slow]


@dataclass
class Deployment:
    amd: Path
    nvidia: Path
    repos: fake_repo.FakeRepos
    dry: subprocess.CompletedProcess
    files_after_dry: dict[str, list[str]]
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess


def apt_files(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for folder in ("etc/apt/sources.list.d", "etc/apt/keyrings", "etc/apt/preferences.d")
        for path in (root / folder).glob("*")
    )


def installed(root: Path, package: str) -> str | None:
    """Version of an installed package in the root, or None."""
    result = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "-f", "${Status} ${Version}", package],
        check=False,  # not installed: dpkg-query exits 1
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not result.stdout.startswith("install ok installed"):
        return None
    return result.stdout.split()[-1]


def groups_of(root: Path, user: str) -> set[str]:
    out = subprocess.run(["chroot", str(root), "id", "-nG", user], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


@pytest.fixture(scope="module")
def deployment(fake_repos, tmp_path_factory) -> Deployment:
    work = tmp_path_factory.mktemp("chroot-deploy")
    amd = prepare_root(work / "mi300x-root", fake_repos)
    nvidia = prepare_root(work / "nvidia-root", fake_repos)
    hosts = write_hosts_file(
        work / "hosts.yaml",
        {
            "mi300x": [{"name": f"@chroot/{amd}", "data": amd_host_data(fake_repos)}],
            "nvidia": [{"name": f"@chroot/{nvidia}", "data": nvidia_host_data(fake_repos)}],
        },
    )
    dry = run_pyinfra(hosts, "--dry")
    files_after_dry = {"amd": apt_files(amd), "nvidia": apt_files(nvidia)}
    first = run_pyinfra(hosts)
    second = run_pyinfra(hosts)
    return Deployment(amd, nvidia, fake_repos, dry, files_after_dry, first, second)


def output(run: subprocess.CompletedProcess) -> str:
    return run.stdout + run.stderr


# --- the plan -----------------------------------------------------------------------------------------------------


def test_dry_run_shows_the_plan_and_changes_nothing(deployment):
    assert deployment.dry.returncode == 0, output(deployment.dry)[-3000:]
    plan = output(deployment.dry)
    assert "amdgpu kernel driver (ROCm 6.1.2, amdgpu-install 6.1.60102-1)" in plan
    assert "NVIDIA Container Toolkit" in plan
    assert deployment.files_after_dry == {
        "amd": ["etc/apt/sources.list.d/distro.list"],
        "nvidia": ["etc/apt/sources.list.d/distro.list"],
    }


# --- the first run ------------------------------------------------------------------------------------------------


def test_first_run_succeeds_and_changes_things(deployment):
    assert deployment.first.returncode == 0, output(deployment.first)[-3000:]
    totals = grand_total(output(deployment.first))
    assert totals.errors == 0 and totals.changed > 20


def test_amd_repositories_keyring_sources_and_pins(deployment):
    root, base = deployment.amd, deployment.repos.base_url
    key = (root / "etc/apt/keyrings/rocm.asc").read_bytes()
    assert hashlib.sha256(key).hexdigest() == deployment.repos.key_sha256["amd"]
    signed = "deb [arch=amd64 signed-by=/etc/apt/keyrings/rocm.asc]"
    assert (root / "etc/apt/sources.list.d/amdgpu.list").read_text() == (
        f"{signed} {base}/amd/amdgpu/6.1.2/ubuntu bookworm main\n"
    )
    assert (root / "etc/apt/sources.list.d/rocm.list").read_text() == (
        f"{signed} {base}/amd/rocm/apt/6.1.2 bookworm main\n"
    )
    # amdgpu and rocm share AMD's key and the same pin: one file, not two identical copies.
    assert sorted(path.name for path in (root / "etc/apt/preferences.d").glob("*")) == ["rocm.pref"]
    pin = root / "etc/apt/preferences.d/rocm.pref"
    assert "Package: *\nPin: release o=repo.radeon.com\nPin-Priority: 600\n" in pin.read_text()
    assert pin.stat().st_mode & 0o777 == 0o644  # apt run by a user must read it, or Debian's rocminfo wins


def test_pins_hold_for_apt_run_by_an_ordinary_user(deployment):
    # The candidate an ordinary user's apt sees: with an unreadable pin it would be Debian's higher 5.2.3.
    policy = subprocess.run(
        ["chroot", "--userspec", f"{GPU_USER}:{GPU_USER}", str(deployment.amd), "apt-cache", "policy", "rocminfo"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Candidate: 1.0.0.60102-1" in policy, policy


def test_amd_packages_come_from_amds_repository(deployment):
    root = deployment.amd
    assert installed(root, "amdgpu-dkms") == "1:6.7.0.60102-1"
    assert installed(root, "rocm-hip-runtime") and installed(root, "rocm-smi-lib")
    # The distro stand-in carries rocminfo 5.2.3, a higher version: only the pin makes apt take AMD's.
    assert installed(root, "rocminfo") == "1.0.0.60102-1"
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
    assert installed(root, f"linux-headers-{kernel}") and installed(root, f"linux-modules-extra-{kernel}")


def test_amd_device_access_and_library_path(deployment):
    root = deployment.amd
    assert {"render", "video", "docker"} <= groups_of(root, GPU_USER)
    rules = (root / "etc/udev/rules.d/70-clinical-kit-rocm.rules").read_text()
    assert 'KERNEL=="kfd", GROUP="render", MODE="0660"' in rules
    assert 'SUBSYSTEM=="drm", KERNEL=="renderD*", GROUP="render", MODE="0660"' in rules
    assert (root / "etc/ld.so.conf.d/rocm.conf").read_text().splitlines() == ["/opt/rocm/lib", "/opt/rocm/lib64"]
    # AMD's post-install PATH step, checked the way a user gets it: a login shell.
    path = subprocess.run(
        ["chroot", str(root), "su", "-l", GPU_USER, "-s", "/bin/sh", "-c", "echo $PATH"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "/opt/rocm/bin" in path.split(":")[-1], path


def test_mi300x_tuning_files_written_but_nothing_live(deployment):
    root = deployment.amd
    grub = (root / "etc/default/grub.d/90-clinical-kit.cfg").read_text()
    assert 'GRUB_CMDLINE_LINUX="${GRUB_CMDLINE_LINUX} pci=realloc=off iommu=pt"' in grub
    assert "kernel.numa_balancing = 0" in (root / "etc/sysctl.d/90-clinical-kit-numa.conf").read_text()
    unit = (root / "etc/systemd/system/clinical-kit-cpuidle.service").read_text()
    assert "ExecStart=/usr/bin/cpupower idle-set -d 2" in unit
    assert installed(root, "linux-tools-common")
    first = output(deployment.first)
    assert "Reboot" not in first and "update-grub" not in first


def test_docker_from_dockers_repository_on_both_nodes(deployment):
    for root in (deployment.amd, deployment.nvidia):
        key = (root / "etc/apt/keyrings/docker.asc").read_bytes()
        assert hashlib.sha256(key).hexdigest() == deployment.repos.key_sha256["docker"]
        assert "/docker/linux/ubuntu bookworm stable" in (root / "etc/apt/sources.list.d/docker.list").read_text()
        for package in ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"):
            assert installed(root, package), package
        assert not (root / "etc/apt/preferences.d/docker.pref").exists()


def test_nvidia_driver_toolkit_and_docker_runtime(deployment):
    root, base = deployment.nvidia, deployment.repos.base_url
    assert (root / "etc/apt/sources.list.d/cuda.list").read_text() == (
        f"deb [arch=amd64 signed-by=/etc/apt/keyrings/cuda.asc] {base}/cuda/ubuntu2204/x86_64/ /\n"
    )
    assert "Pin: release l=NVIDIA CUDA\nPin-Priority: 600" in (root / "etc/apt/preferences.d/cuda.pref").read_text()
    toolkit_key = "/etc/apt/keyrings/nvidia-container-toolkit.asc"
    assert (root / "etc/apt/sources.list.d/nvidia-container-toolkit.list").read_text() == (
        f"deb [arch=amd64 signed-by={toolkit_key}] {base}/nvct/stable/deb/$(ARCH)/ /\n"
    )
    assert installed(root, "cuda-drivers-550") and installed(root, "nvidia-fabricmanager-550")
    assert not installed(root, "cuda-drivers-560")
    assert installed(root, "nvidia-container-toolkit")
    assert '"nvidia"' in (root / "etc/docker/daemon.json").read_text()
    assert {"docker"} <= groups_of(root, GPU_USER)
    assert not (root / "etc/udev/rules.d/70-clinical-kit-rocm.rules").exists()  # AMD-only pieces stay off


# --- the second run -----------------------------------------------------------------------------------------------


def test_second_run_changes_nothing(deployment):
    assert deployment.second.returncode == 0, output(deployment.second)[-3000:]
    totals: Totals = grand_total(output(deployment.second))
    assert totals.errors == 0
    assert totals.changed == 0, output(deployment.second)[-6000:]
    assert totals.unchanged == totals.operations == grand_total(output(deployment.first)).operations


def test_nvidia_ctk_ran_once_across_both_runs(deployment):
    # It rewrites daemon.json whenever it runs; the deploy only calls it while the runtime is missing.
    log = (deployment.nvidia / "var/log/fake-nvidia-ctk.log").read_text().splitlines()
    assert log == ["runtime configure --runtime=docker"]


# --- turning the tuning off again (runs last: it changes the MI300X root) -----------------------------------------


def test_turning_the_tuning_off_removes_its_files_and_leaves_no_service_or_kernel_step(deployment, tmp_path):
    data = amd_host_data(deployment.repos)
    off = {
        **data,
        "tune_iommu_passthrough": False,
        "tune_pci_realloc_off": False,
        "tune_numa_balancing_off": False,
        "tune_disable_cpu_idle_state": None,
    }
    hosts = write_hosts_file(tmp_path / "hosts.yaml", {"mi300x": [{"name": f"@chroot/{deployment.amd}", "data": off}]})

    run = run_pyinfra(hosts)

    assert run.returncode == 0, output(run)[-3000:]
    root = deployment.amd
    for path in (GRUB_DROP_IN, SYSCTL_FILE, f"/etc/systemd/system/{CPUIDLE_UNIT}"):
        assert not (root / path.lstrip("/")).exists(), path
    # A chroot has no kernel, systemd or grub of its own: the live undo steps are for real hosts only.
    for live_only in ("update-grub", "systemctl", "sysctl -w", "Reboot"):
        assert live_only not in output(run), live_only
    assert "MI300X system tuning" in output(run)
