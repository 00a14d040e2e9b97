"""NVIDIA's data-centre driver from the CUDA repository, Fabric Manager on NVSwitch boards, the Container Toolkit.

The repositories themselves are written by apt_repo.apt_sources before apt's lists are refreshed."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, systemd

from provision.operations import docker_nvidia_runtime
from provision.settings import NodeSettings


@deploy("NVIDIA driver")
def nvidia_driver(settings: NodeSettings) -> OperationMeta:
    """Returns the driver install operation: a reboot is due when it changed."""
    driver = apt.packages(
        name=f"NVIDIA driver branch {settings.nvidia_driver_branch} (cuda-drivers-<branch>)",
        packages=list(settings.driver_packages),
    )
    return driver


@deploy("NVIDIA Fabric Manager")
def nvidia_fabricmanager_running(settings: NodeSettings) -> None:
    """NVSwitch boards (HGX/DGX A100, H100): the GPUs stay uninitialised until Fabric Manager runs, and NVIDIA's
    package neither enables nor starts it. Called after the driver reboot, when the new kernel module is loaded."""
    if not settings.nvidia_fabricmanager or settings.in_container_or_chroot:
        return
    systemd.service(
        name="NVIDIA Fabric Manager runs and starts at boot",
        service="nvidia-fabricmanager",
        running=True,
        enabled=True,
    )


@deploy("NVIDIA Container Toolkit")
def nvidia_container_toolkit(settings: NodeSettings) -> None:
    """Needs Docker installed first: nvidia-ctk writes Docker's daemon.json."""
    apt.packages(name="NVIDIA Container Toolkit", packages=list(settings.container_toolkit_packages))
    runtime = docker_nvidia_runtime(name="Docker knows the nvidia runtime")
    if not settings.in_container_or_chroot:
        systemd.service(
            name="Restart Docker to load the nvidia runtime", service="docker", restarted=True, _if=runtime.did_change
        )
