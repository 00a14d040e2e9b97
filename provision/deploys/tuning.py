"""AMD's Instinct system settings (opt-in, see group_data/all.py): kernel arguments, NUMA balancing, CPU idle."""

from __future__ import annotations

import re
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server, systemd

from provision.settings import NodeSettings, Tuning

GRUB_DROP_IN = "/etc/default/grub.d/90-clinical-kit.cfg"
SYSCTL_FILE = "/etc/sysctl.d/90-clinical-kit-numa.conf"
CPUIDLE_UNIT = "clinical-kit-cpuidle.service"
CPUIDLE_UNIT_PATH = f"/etc/systemd/system/{CPUIDLE_UNIT}"
# The deploy label per group: the tuning follows AMD's guide for that family (MI300X's, MI200's for the MI250).
GPU_FAMILY = {"mi250": "MI250", "mi300x": "MI300X"}
# Turning NUMA balancing back on: 1 is the kernel's default where it is built with NUMA_BALANCING_DEFAULT_ENABLED
# (Ubuntu's and Debian's kernels are); then every sysctl.d file again, so a site's own setting still wins. Hosts
# without NUMA have no such key and skip the first step.
NUMA_RESTORE = (
    "if [ -e /proc/sys/kernel/numa_balancing ]; then sysctl -w kernel.numa_balancing=1; fi; sysctl --system >/dev/null"
)


def grub_drop_in(kernel_args: tuple[str, ...]) -> str:
    # A drop-in that appends to GRUB_CMDLINE_LINUX, as AMD's guide edits it: that variable reaches every boot
    # entry (GRUB_CMDLINE_LINUX_DEFAULT skips recovery ones). The site's /etc/default/grub stays untouched and
    # this file alone can be removed; update-grub sources /etc/default/grub.d/*.cfg after /etc/default/grub.
    args = " ".join(kernel_args)
    return (
        "# Written by provision/ (clinical-finetune-kit): kernel arguments from AMD's Instinct tuning guides\n"
        "# (tune_iommu_passthrough, tune_pci_realloc_off).\n"
        f'GRUB_CMDLINE_LINUX="${{GRUB_CMDLINE_LINUX}} {args}"\n'
    )


def cpuidle_unit(state: int) -> str:
    # cpupower's setting does not survive a reboot, so a oneshot unit applies it at every boot.
    return (
        "# Written by provision/ (clinical-finetune-kit): tune_disable_cpu_idle_state\n"
        "[Unit]\nDescription=Disable deep CPU idle states for GPU nodes (AMD MI300X tuning guide)\n\n"
        f"[Service]\nType=oneshot\nExecStart=/usr/bin/cpupower idle-set -d {state}\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def instinct_tuning(settings: NodeSettings) -> list[OperationMeta]:
    """AMD's tuning for the host's Instinct family, labelled with that family (MI250 or MI300X); every setting
    turned off is undone, live included. Returns the operations that only take effect after a reboot."""
    family = GPU_FAMILY.get(settings.group, settings.group)
    return deploy(f"{family} system tuning")(_tuning)(settings)


def _tuning(settings: NodeSettings) -> list[OperationMeta]:
    live = not settings.in_container_or_chroot
    needs_reboot = [_kernel_args(settings.tuning, live)]
    _numa_balancing(settings.tuning, live)
    _cpu_idle(settings.tuning, live)
    return needs_reboot


def _kernel_args(tuning: Tuning, live: bool) -> OperationMeta:
    if tuning.kernel_args:
        grub = files.put(
            name="Kernel arguments (grub drop-in)",
            src=StringIO(grub_drop_in(tuning.kernel_args)),
            dest=GRUB_DROP_IN,
            mode="644",
        )
    else:
        grub = files.file(name="No kernel argument drop-in", path=GRUB_DROP_IN, present=False)
    if live and grub.will_change:
        # Written or removed alike: grub.cfg keeps the old arguments until update-grub rebuilds it, and the running
        # kernel until the reboot the caller schedules when this changed.
        server.shell(name="Regenerate the grub configuration", commands=["update-grub"], _if=grub.did_change)
    return grub


def _numa_balancing(tuning: Tuning, live: bool) -> None:
    if tuning.numa_balancing_off:
        files.put(
            name="NUMA balancing off at boot",
            src=StringIO(
                "# Written by provision/ (clinical-finetune-kit): tune_numa_balancing_off\nkernel.numa_balancing = 0\n"
            ),
            dest=SYSCTL_FILE,
            mode="644",
        )
        if live:  # a chroot has no /proc/sys to write to
            server.sysctl(name="NUMA balancing off now", key="kernel.numa_balancing", value=0)
        return
    removed = files.file(name="No NUMA balancing override", path=SYSCTL_FILE, present=False)
    if live and removed.will_change:
        # Removing the file changes nothing until the next boot: set the live value back too.
        server.shell(name="NUMA balancing back to the kernel default now", commands=[NUMA_RESTORE],
                     _if=removed.did_change)  # fmt: skip


def _cpu_idle(tuning: Tuning, live: bool) -> None:
    if tuning.disable_cpu_idle_state is not None:
        apt.packages(name="cpupower", packages=list(tuning.cpupower_packages), no_recommends=True)
        unit = files.put(
            name="CPU idle state unit",
            src=StringIO(cpuidle_unit(tuning.disable_cpu_idle_state)),
            dest=CPUIDLE_UNIT_PATH,
            mode="644",
        )
        if live:
            systemd.service(
                name="CPU idle state applied now and at boot",
                service=CPUIDLE_UNIT,
                enabled=True,
                restarted=True,
                daemon_reload=True,
                _if=unit.did_change,
            )
        return
    unit_lines = host.get_fact(FileContents, path=CPUIDLE_UNIT_PATH) if live else None
    if unit_lines:
        # Before the file goes: systemctl disable needs the unit file to find its [Install] links, and the state
        # the unit disabled is read from it. The kernel keeps that state disabled until told otherwise.
        server.shell(
            name="CPU idle state unit disabled, the idle state enabled again now",
            commands=[f"systemctl disable {CPUIDLE_UNIT}", enable_idle_state_command(unit_lines)],
        )
    removed = files.file(name="No CPU idle state unit", path=CPUIDLE_UNIT_PATH, present=False)
    if live and removed.will_change:  # planned only when there is something to undo: a clean plan otherwise
        systemd.daemon_reload(name="systemd forgets the CPU idle state unit", _if=removed.did_change)


def enable_idle_state_command(unit_lines: list[str]) -> str:
    """Re-enable, on every CPU, the idle state a unit of ours disabled (every state if its line is unreadable),
    through sysfs as cpupower does, so it works after cpupower is gone too."""
    match = re.search(r"idle-set -d (\d+)", "\n".join(unit_lines))
    state = match.group(1) if match else "[0-9]*"
    return f'for f in /sys/devices/system/cpu/cpu[0-9]*/cpuidle/state{state}/disable; do echo 0 > "$f"; done'
