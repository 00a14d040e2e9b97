"""AMD's Instinct system settings (opt-in, see group_data/all.py): kernel arguments, NUMA balancing, CPU idle."""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server, systemd

from provision.settings import NodeSettings

GRUB_DROP_IN = "/etc/default/grub.d/90-clinical-kit.cfg"
SYSCTL_FILE = "/etc/sysctl.d/90-clinical-kit-numa.conf"
CPUIDLE_UNIT = "clinical-kit-cpuidle.service"


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


@deploy("MI300X system tuning")
def mi300x_tuning(settings: NodeSettings) -> list[OperationMeta]:
    """Returns the operations that only take effect after a reboot."""
    tuning = settings.tuning
    live = not settings.in_container_or_chroot
    needs_reboot = []

    if tuning.kernel_args:
        grub = files.put(
            name="Kernel arguments (grub drop-in)",
            src=StringIO(grub_drop_in(tuning.kernel_args)),
            dest=GRUB_DROP_IN,
            mode="644",
        )
        if live:
            server.shell(name="Regenerate the grub configuration", commands=["update-grub"], _if=grub.did_change)
        needs_reboot.append(grub)
    else:
        files.file(name="No kernel argument drop-in", path=GRUB_DROP_IN, present=False)

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
    else:
        files.file(name="No NUMA balancing override", path=SYSCTL_FILE, present=False)

    if tuning.disable_cpu_idle_state is not None:
        apt.packages(name="cpupower", packages=list(tuning.cpupower_packages), no_recommends=True)
        unit = files.put(
            name="CPU idle state unit",
            src=StringIO(cpuidle_unit(tuning.disable_cpu_idle_state)),
            dest=f"/etc/systemd/system/{CPUIDLE_UNIT}",
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
    else:
        files.file(name="No CPU idle state unit", path=f"/etc/systemd/system/{CPUIDLE_UNIT}", present=False)
    return needs_reboot
