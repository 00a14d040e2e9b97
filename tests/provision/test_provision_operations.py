"""Operation-level tests for what cannot run in a chroot: reboots, grub, sysctl, systemd, GPU and image checks.

Each test runs one of our deploys against a pyinfra @fake host whose facts are canned command output, and asserts
on the commands pyinfra executed and the files it uploaded (see fakehost.py).
"""

from __future__ import annotations

import pytest
from pyinfra.api.operation import OperationMeta

from .fakehost import run_deploy
from provision.deploys.docker import docker_engine
from provision.deploys.nvidia import nvidia_container_toolkit
from provision.deploys.tuning import CPUIDLE_UNIT, GRUB_DROP_IN, SYSCTL_FILE, mi300x_tuning
from provision.deploys.verify import reboot_if_needed, verify
from provision.facts import EXIT_MARKER, parse_rocminfo

ROCMINFO_MI300X = """\
ROCk module is loaded
==========
HSA Agents
==========
*******
Agent 1
*******
  Name:                    AMD EPYC 9654 96-Core Processor
  Marketing Name:          AMD EPYC 9654 96-Core Processor
  Device Type:             CPU
*******
Agent 2
*******
  Name:                    gfx942
  Uuid:                    GPU-4f2ea2c1a8d4c2b5
  Marketing Name:          AMD Instinct MI300X
  Vendor Name:             AMD
  Device Type:             GPU
  ISA Info:
    ISA 1
      Name:                    amdgcn-amd-amdhsa--gfx942:sramecc+:xnack-
*******
Agent 3
*******
  Name:                    gfx942
  Marketing Name:          AMD Instinct MI300X
  Device Type:             GPU
"""

TUNING_ON = {
    "tune_kernel_args": ["pci=realloc=off", "amd_iommu=on", "iommu=pt"],
    "tune_numa_balancing_off": True,
    "tune_disable_cpu_idle_state": 2,
}
NO_VERIFY_IMAGE = {"verify_kit_image": False}


def completed(changed: bool) -> OperationMeta:
    """An operation that already ran, changing something or not (what reboot_if_needed is handed)."""
    meta = OperationMeta(hash=f"op-{changed}", is_change=changed)
    meta.set_complete(True, ["a command"] if changed else [], None)
    return meta


# --- parsing -------------------------------------------------------------------------------------------------------


def test_rocminfo_lists_gpu_agents_only():
    assert parse_rocminfo(ROCMINFO_MI300X.splitlines()) == ["gfx942", "gfx942"]


def test_rocminfo_without_rocm_is_empty():
    assert parse_rocminfo([]) == []


# --- MI300X tuning on a live host ------------------------------------------------------------------------------------


def test_tuning_on_a_live_host_writes_grub_sysctl_and_unit_and_applies_them():
    run = run_deploy("mi300x", mi300x_tuning, data=TUNING_ON)

    assert "pci=realloc=off amd_iommu=on iommu=pt" in run.uploads[GRUB_DROP_IN]
    assert "${GRUB_CMDLINE_LINUX_DEFAULT}" in run.uploads[GRUB_DROP_IN]  # appends, keeps the site's own args
    assert "kernel.numa_balancing = 0" in run.uploads[SYSCTL_FILE]
    assert "ExecStart=/usr/bin/cpupower idle-set -d 2" in run.uploads[f"/etc/systemd/system/{CPUIDLE_UNIT}"]
    assert run.ran("update-grub")
    assert run.ran("sysctl kernel.numa_balancing=0")
    assert run.ran(f"systemctl enable {CPUIDLE_UNIT}")
    assert run.ran(f"systemctl start {CPUIDLE_UNIT}")  # a oneshot unit: starting it applies the setting now
    assert run.ran("linux-tools-common linux-tools-6.8.0-45-generic")  # cpupower for the running kernel


def test_tuning_in_a_chroot_writes_files_but_touches_no_kernel_or_service():
    run = run_deploy("mi300x", mi300x_tuning, data={**TUNING_ON, "in_container_or_chroot": True})

    assert GRUB_DROP_IN in run.uploads and SYSCTL_FILE in run.uploads
    for live_only in ("update-grub", "sysctl kernel.numa_balancing=", "systemctl"):
        assert not run.ran(live_only), live_only


def test_tuning_is_opt_in_and_removes_what_an_earlier_run_wrote():
    run = run_deploy(
        "mi300x",
        mi300x_tuning,
        responses={"stat -c": "user=root group=root mode=-rw-r--r-- atime=1 mtime=1 ctime=1 size=1 'x'"},
    )

    assert run.uploads == {}
    assert run.ran(f"rm -f {GRUB_DROP_IN}") and run.ran(f"rm -f {SYSCTL_FILE}")
    assert not run.ran("update-grub")


def test_tuning_settings_are_refused_on_nvidia_hosts():
    with pytest.raises(ValueError, match="tune_\\* settings are AMD's"):
        run_deploy("nvidia", docker_engine, data={"tune_numa_balancing_off": True})


# --- reboot only when the kernel side changed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expect_reboot"),
    [([completed(True)], True), ([completed(False), completed(True)], True), ([completed(False)], False), ([], False)],
)
def test_reboot_follows_driver_or_kernel_argument_changes(changes, expect_reboot):
    run = run_deploy(
        "mi300x",
        reboot_if_needed,
        responses={"/proc/uptime": "86400"},
        args=lambda settings: (settings, changes),
    )

    assert run.ran("reboot") is expect_reboot
    if expect_reboot:
        assert run.ran("cut -d. -f1 /proc/uptime")  # the uptime before and after: how pyinfra sees the host return


def test_no_reboot_in_a_chroot_even_after_a_driver_change():
    run = run_deploy(
        "mi300x",
        reboot_if_needed,
        data={"in_container_or_chroot": True},
        args=lambda settings: (settings, [completed(True)]),
    )
    assert not run.ran("reboot")


# --- services -----------------------------------------------------------------------------------------------------


def test_docker_is_started_and_enabled_on_a_live_host():
    run = run_deploy("mi300x", docker_engine)
    assert run.ran("systemctl start docker.service") and run.ran("systemctl enable docker.service")


def test_docker_service_is_left_alone_in_a_chroot():
    run = run_deploy("mi300x", docker_engine, data={"in_container_or_chroot": True})
    assert not run.ran("systemctl")


DOCKER_RUNNING = {"--property SubState docker.service": ["Id=docker.service", "SubState=running"]}


def test_nvidia_runtime_configured_then_docker_restarted():
    run = run_deploy("nvidia", nvidia_container_toolkit, responses=DOCKER_RUNNING)
    assert run.ran("nvidia-ctk runtime configure --runtime=docker")
    assert run.ran("systemctl restart docker.service")


def test_nvidia_runtime_already_registered_means_no_restart():
    run = run_deploy(
        "nvidia",
        nvidia_container_toolkit,
        responses={
            "cat /etc/docker/daemon.json": '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}',
            **DOCKER_RUNNING,
        },
    )
    assert not run.ran("nvidia-ctk")
    assert not run.ran("systemctl restart docker")


# --- verification ---------------------------------------------------------------------------------------------------


def test_gpu_check_passes_quietly_when_the_gpus_match():
    run = run_deploy(
        "mi300x",
        verify,
        data={**NO_VERIFY_IMAGE, "expected_gpu_count": 2},
        responses={"rocminfo": ROCMINFO_MI300X},
    )
    assert not run.ran("GPU check failed")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"expected_gpu_count": 8}, "expected 8 GPUs, found 2"),
        ({"expected_gpu_archs": ["gfx90a"]}, "unexpected architecture(s) gfx942 (expected gfx90a)"),
    ],
)
def test_gpu_check_fails_with_what_was_found(data, problem):
    run = run_deploy("mi300x", verify, data={**NO_VERIFY_IMAGE, **data}, responses={"rocminfo": ROCMINFO_MI300X})
    failure = [command for command in run.commands if "GPU check failed" in command]
    assert failure and problem in failure[0] and failure[0].endswith("exit 1")


def test_gpu_check_without_rocm_reports_no_gpu():
    run = run_deploy("mi300x", verify, data=NO_VERIFY_IMAGE, responses={"command -v rocminfo": "##PYINFRA_NOCMD##"})
    assert run.ran("no GPU found")


def test_nvidia_gpu_check_reads_compute_capability():
    run = run_deploy(
        "nvidia",
        verify,
        data={**NO_VERIFY_IMAGE, "expected_gpu_count": 2, "expected_gpu_archs": ["9.0"]},
        responses={"nvidia-smi --query-gpu": ["0, NVIDIA H100 80GB HBM3, 9.0", "1, NVIDIA H100 80GB HBM3, 9.0"]},
    )
    assert not run.ran("GPU check failed")


def test_rocm_checks_run_with_the_hosts_render_gid_and_pass_quietly():
    run = run_deploy(
        "mi300x",
        verify,
        data={"verify_gpus": False},
        responses={
            "docker image inspect": "sha256:0123",
            "getent group render": "render:x:109:alice",
            "docker run": ['{"checks": []}', f"{EXIT_MARKER}0"],
        },
    )
    [checks] = [command for command in run.commands if "docker run" in command]
    assert "--device /dev/kfd --device /dev/dri --group-add video --group-add 109" in checks
    assert "--security-opt seccomp=unconfined --ipc host" in checks and "--pull never" in checks
    assert "clinical-finetune-kit:latest-rocm python -m checks --json" in checks
    assert not run.ran("docker pull")  # already present
    assert not run.ran("checks failed")


def test_failed_checks_fail_the_host_with_their_output():
    run = run_deploy(
        "nvidia",
        verify,
        data={"verify_gpus": False},
        responses={"docker run": ["torch_gpu: FAIL no device", f"{EXIT_MARKER}1"]},
    )
    assert run.ran("docker pull clinical-finetune-kit:latest-cuda")
    [checks] = [command for command in run.commands if "docker run" in command]
    assert "--gpus all --ipc host" in checks
    assert run.ran("checks failed in clinical-finetune-kit:latest-cuda (exit 1)") and run.ran("torch_gpu: FAIL no device")


def test_air_gapped_image_is_uploaded_and_loaded_instead_of_pulled(tmp_path):
    tarball = tmp_path / "kit-rocm.tar"
    tarball.write_text("not really an image")
    run = run_deploy(
        "mi300x",
        verify,
        data={"verify_gpus": False, "kit_image_tarball": str(tarball)},
        responses={"docker run": f"{EXIT_MARKER}0"},
    )
    assert "/var/lib/clinical-kit/images/kit-rocm.tar" in run.uploads
    assert run.ran("docker load -i /var/lib/clinical-kit/images/kit-rocm.tar")
    assert not run.ran("docker pull")
