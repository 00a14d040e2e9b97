"""Operation-level tests for what cannot run in a chroot: reboots, grub, sysctl, systemd, GPU and image checks.

Each test runs one of our deploys against a pyinfra @fake host whose facts are canned command output, and asserts
on the commands pyinfra executed and the files it uploaded (see fakehost.py).
"""

from __future__ import annotations

import re

import pytest
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from provision.deploys.apt_repo import apt_sources
from provision.deploys.docker import docker_engine
from provision.deploys.nvidia import nvidia_container_toolkit, nvidia_fabricmanager_running
from provision.deploys.rocm import PROFILE_FILE, UDEV_RULES_FILE, rocm
from provision.deploys.tuning import (
    CPUIDLE_UNIT,
    GRUB_DROP_IN,
    SYSCTL_FILE,
    cpuidle_unit,
    enable_idle_state_command,
    instinct_tuning,
)
from provision.deploys.verify import reboot_if_needed, verify
from provision.facts import EXIT_MARKER, parse_rocminfo
from provision.operations import apt_lists_current

from .fakehost import run_deploy

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
    "tune_iommu_passthrough": True,
    "tune_pci_realloc_off": True,
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
    run = run_deploy("mi300x", instinct_tuning, data=TUNING_ON)

    # An AMD CPU (the fake host's /proc/cpuinfo): AMD's guide gives iommu=pt, not amd_iommu=on.
    assert 'GRUB_CMDLINE_LINUX="${GRUB_CMDLINE_LINUX} pci=realloc=off iommu=pt"' in run.uploads[GRUB_DROP_IN]
    assert "kernel.numa_balancing = 0" in run.uploads[SYSCTL_FILE]
    assert "ExecStart=/usr/bin/cpupower idle-set -d 2" in run.uploads[f"/etc/systemd/system/{CPUIDLE_UNIT}"]
    assert run.ran("update-grub")
    assert run.ran("sysctl kernel.numa_balancing=0")
    assert run.ran(f"systemctl enable {CPUIDLE_UNIT}")
    assert run.ran(f"systemctl start {CPUIDLE_UNIT}")  # a oneshot unit: starting it applies the setting now
    assert run.ran("linux-tools-common linux-tools-6.8.0-45-generic")  # cpupower for the running kernel


def test_tuning_in_a_chroot_writes_files_but_touches_no_kernel_or_service():
    run = run_deploy("mi300x", instinct_tuning, data={**TUNING_ON, "in_container_or_chroot": True})

    assert GRUB_DROP_IN in run.uploads and SYSCTL_FILE in run.uploads
    for live_only in ("update-grub", "sysctl kernel.numa_balancing=", "systemctl"):
        assert not run.ran(live_only), live_only


EXISTING_FILE = {"stat -c": "user=root group=root mode=-rw-r--r-- atime=1 mtime=1 ctime=1 size=1 'x'"}
OLD_CPUIDLE_UNIT = {f"cat /etc/systemd/system/{CPUIDLE_UNIT}": cpuidle_unit(2).splitlines()}


@deploy("tuning, then the reboot it asks for")
def _tuning_then_reboot(settings):
    reboot_if_needed(settings, instinct_tuning(settings))


def position(run, fragment: str) -> int:
    return next(i for i, command in enumerate(run.commands) if fragment in command)


def test_tuning_is_opt_in_and_a_fresh_host_gets_nothing_to_undo():
    run = run_deploy("mi300x", _tuning_then_reboot, responses={"/proc/uptime": "86400"})

    assert run.uploads == {}
    for undo in ("update-grub", "sysctl -w", "sysctl --system", "systemctl", "reboot", "cpuidle/state"):
        assert not run.ran(undo), undo


def test_turning_tuning_off_undoes_every_setting_on_a_live_host():
    """An earlier run wrote the drop-in, the sysctl file and the unit: all three are undone, live values too."""
    run = run_deploy(
        "mi300x", _tuning_then_reboot, responses={**EXISTING_FILE, **OLD_CPUIDLE_UNIT, "/proc/uptime": "86400"}
    )

    assert run.uploads == {}
    # Kernel arguments: the drop-in goes, grub.cfg is regenerated without them, and the host reboots.
    assert position(run, f"rm -f {GRUB_DROP_IN}") < position(run, "update-grub") < position(run, "reboot")
    # NUMA balancing: the file goes and the live value returns to the kernel default.
    assert position(run, f"rm -f {SYSCTL_FILE}") < position(run, "sysctl -w kernel.numa_balancing=1")
    # CPU idle: disabled while its file still exists, state 2 enabled again, the file removed, systemd reloaded.
    unit_path = f"/etc/systemd/system/{CPUIDLE_UNIT}"
    assert position(run, f"systemctl disable {CPUIDLE_UNIT}") < position(run, f"rm -f {unit_path}")
    assert run.ran("/sys/devices/system/cpu/cpu[0-9]*/cpuidle/state2/disable")
    assert position(run, f"rm -f {unit_path}") < position(run, "systemctl daemon-reload")


def test_turning_tuning_off_in_a_chroot_only_removes_the_files():
    run = run_deploy(
        "mi300x",
        _tuning_then_reboot,
        data={"in_container_or_chroot": True},
        responses={**EXISTING_FILE, **OLD_CPUIDLE_UNIT},
    )

    assert run.ran(f"rm -f {GRUB_DROP_IN}") and run.ran(f"rm -f /etc/systemd/system/{CPUIDLE_UNIT}")
    for live_only in ("update-grub", "sysctl -w", "sysctl --system", "systemctl", "reboot", "cpuidle/state"):
        assert not run.ran(live_only), live_only


def test_idle_state_reenabled_is_the_one_the_unit_disabled():
    assert "/cpuidle/state3/disable" in enable_idle_state_command(cpuidle_unit(3).splitlines())
    assert "/cpuidle/state[0-9]*/disable" in enable_idle_state_command(["[Service]", "ExecStart=/bin/true"])


@pytest.mark.parametrize(("group", "label"), [("mi250", "MI250 system tuning"), ("mi300x", "MI300X system tuning")])
def test_tuning_is_labelled_with_the_hosts_gpu_family(group, label):
    run = run_deploy(group, instinct_tuning, data=TUNING_ON)

    names = {name for meta in run.state.get_op_order() for name in run.state.op_meta[meta].names}
    assert any(name.startswith(f"{label} | ") for name in names), names
    assert not any(other in name for name in names for other in ("MI250", "MI300X") if other not in label)


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
    run = run_deploy(
        "mi300x", verify, data=NO_VERIFY_IMAGE, responses={"command -v /opt/rocm/bin/rocminfo": "##PYINFRA_NOCMD##"}
    )
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
    assert run.ran("checks failed in clinical-finetune-kit:latest-cuda (exit 1)") and run.ran(
        "torch_gpu: FAIL no device"
    )


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


def test_rocminfo_is_called_by_full_path():
    # pyinfra's shell is not a login shell: /opt/rocm/bin is not on its PATH on a correctly installed node.
    run = run_deploy("mi300x", verify, data=NO_VERIFY_IMAGE, responses={"rocminfo": ROCMINFO_MI300X})
    assert run.ran("/opt/rocm/bin/rocminfo")
    assert not any(command.startswith("rocminfo") for command in run.commands)


# --- kernel arguments follow the CPU vendor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpuinfo", "data", "expected"),
    [
        ("vendor_id\t: AuthenticAMD", {}, "pci=realloc=off iommu=pt"),
        ("vendor_id\t: GenuineIntel", {}, "pci=realloc=off intel_iommu=on iommu=pt"),
        ("", {"cpu_vendor": "intel"}, "pci=realloc=off intel_iommu=on iommu=pt"),  # a host data override
        ("vendor_id\t: AuthenticAMD", {"tune_pci_realloc_off": False}, "iommu=pt"),
    ],
    ids=["amd-cpu", "intel-cpu", "vendor-from-data", "iommu-only"],
)
def test_iommu_arguments_follow_the_cpu_vendor_through_grub_cmdline_linux(cpuinfo, data, expected):
    run = run_deploy("mi300x", instinct_tuning, data={**TUNING_ON, **data}, responses={"/proc/cpuinfo": cpuinfo})
    assert f'GRUB_CMDLINE_LINUX="${{GRUB_CMDLINE_LINUX}} {expected}"\n' in run.uploads[GRUB_DROP_IN]
    assert "amd_iommu" not in run.uploads[GRUB_DROP_IN] and "_DEFAULT" not in run.uploads[GRUB_DROP_IN]
    assert run.ran("update-grub")


def test_iommu_passthrough_without_a_known_cpu_vendor_is_an_error():
    with pytest.raises(ValueError, match="cpu_vendor is None and the host's /proc/cpuinfo gives vendor_id 'nothing'"):
        run_deploy("mi300x", instinct_tuning, data=TUNING_ON, responses={"/proc/cpuinfo": ""})


def test_the_retired_kernel_argument_list_says_what_replaced_it():
    with pytest.raises(ValueError, match="tune_kernel_args was replaced by tune_iommu_passthrough"):
        run_deploy("mi300x", instinct_tuning, data={"tune_kernel_args": ["iommu=pt"]})


# --- ROCm device access and paths ------------------------------------------------------------------------------------


def test_udev_rules_are_reloaded_and_triggered_on_a_live_host():
    run = run_deploy("mi300x", rocm)
    assert 'KERNEL=="kfd", GROUP="render", MODE="0660"' in run.uploads[UDEV_RULES_FILE]
    reload_at = next(i for i, command in enumerate(run.commands) if "udevadm control --reload" in command)
    trigger_at = next(i for i, command in enumerate(run.commands) if "udevadm trigger" in command)
    assert reload_at < trigger_at  # the new rules are loaded before they are applied to present devices


def test_udev_is_left_alone_in_a_chroot():
    run = run_deploy("mi300x", rocm, data={"in_container_or_chroot": True})
    assert UDEV_RULES_FILE in run.uploads and not run.ran("udevadm")


def test_rocm_tools_are_on_users_path():
    run = run_deploy("mi300x", rocm)
    assert "/opt/rocm/bin" in run.uploads[PROFILE_FILE]
    assert run.ran(f"chmod 644 {PROFILE_FILE}")


# --- NVIDIA Fabric Manager -------------------------------------------------------------------------------------------


def test_fabric_manager_is_enabled_and_started_on_nvswitch_nodes():
    run = run_deploy("nvidia", nvidia_fabricmanager_running, data={"nvidia_fabricmanager": True})
    assert run.ran("systemctl start nvidia-fabricmanager.service")
    assert run.ran("systemctl enable nvidia-fabricmanager.service")


@pytest.mark.parametrize(
    "data", [{"nvidia_fabricmanager": False}, {"nvidia_fabricmanager": True, "in_container_or_chroot": True}]
)
def test_fabric_manager_service_is_left_alone_without_nvswitch_or_in_a_chroot(data):
    assert not run_deploy("nvidia", nvidia_fabricmanager_running, data=data).ran("nvidia-fabricmanager")


def test_fabric_manager_package_matches_the_driver_branch():
    run = run_deploy("nvidia", nvidia_fabricmanager_running, data={"nvidia_fabricmanager": True})
    branch = run.settings.nvidia_driver_branch
    assert run.settings.driver_packages == (f"cuda-drivers-{branch}", f"nvidia-fabricmanager-{branch}")


# --- apt: every source before the lists are refreshed ----------------------------------------------------------------

STAMP_CHECK = "update-success-stamp"


@deploy("apt lists")
def _apt_lists(changed: list[OperationMeta]) -> None:
    apt_lists_current(name="apt lists", sources=changed, cache_time=3600)


@pytest.mark.parametrize(
    ("sources", "stamp_state", "expect_update"),
    [
        ([completed(True)], "", True),  # a source changed in this run: refresh even if the lists look fresh
        ([completed(False)], "sources changed", True),  # a file newer than the last good refresh (earlier failure)
        ([completed(False)], "older than 3600 s", True),
        ([completed(False)], "missing", True),
        ([completed(False)], "", False),
    ],
    ids=["changed-now", "changed-before", "aged", "never-updated", "fresh"],
)
def test_apt_lists_are_refreshed_strictly_when_a_source_changed_or_they_aged(sources, stamp_state, expect_update):
    run = run_deploy("mi300x", _apt_lists, responses={STAMP_CHECK: stamp_state}, args=lambda settings: (sources,))
    assert run.ran("apt-get update --error-on=any") is expect_update


def test_vendor_sources_are_all_written_before_the_one_apt_update():
    @deploy("sources")
    def sources(settings):
        apt_sources(settings.apt_repos, settings.apt_arch, settings.apt_cache_time)

    run = run_deploy("nvidia", sources)
    update_at = [i for i, command in enumerate(run.commands) if "apt-get update" in command]
    written_at = [i for i, command in enumerate(run.commands) if "/etc/apt/sources.list.d/" in command]
    assert len(update_at) == 1 and written_at and max(written_at) < update_at[0]
    assert set(run.uploads) >= {
        "/etc/apt/sources.list.d/cuda.list",
        "/etc/apt/sources.list.d/docker.list",
        "/etc/apt/sources.list.d/nvidia-container-toolkit.list",
    }


@deploy("sources")
def _sources(settings):
    apt_sources(settings.apt_repos, settings.apt_arch, settings.apt_cache_time)


def test_pin_files_are_world_readable():
    run = run_deploy("mi300x", _sources)
    pin = "/etc/apt/preferences.d/rocm.pref"
    assert pin in run.uploads and run.ran(f"chmod 644 {pin}"), pin


@pytest.mark.parametrize(("group", "pin"), [("mi300x", "rocm.pref"), ("nvidia", "cuda.pref")])
def test_identical_pins_are_written_once_and_an_earlier_copy_removed(group, pin):
    earlier_copy = re.compile(r"stat -c .*/etc/apt/preferences\.d/amdgpu\.pref")
    run = run_deploy(group, _sources, responses={earlier_copy: EXISTING_FILE["stat -c"]})

    pins = sorted(path for path in run.uploads if path.startswith("/etc/apt/preferences.d/"))
    assert pins == [f"/etc/apt/preferences.d/{pin}"]
    if group == "mi300x":  # amdgpu and rocm: one key, one pin, one file; an earlier run's copy goes
        assert run.ran("rm -f /etc/apt/preferences.d/amdgpu.pref")
