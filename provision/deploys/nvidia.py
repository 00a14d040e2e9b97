"""NVIDIA's data-centre driver from the CUDA repository and the NVIDIA Container Toolkit."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, systemd

from provision.deploys.apt_repo import vendor_apt_repos
from provision.operations import docker_nvidia_runtime
from provision.settings import NodeSettings


@deploy("NVIDIA driver")
def nvidia_driver(settings: NodeSettings) -> OperationMeta:
    """Returns the driver install operation: a reboot is due when it changed."""
    vendor_apt_repos(settings.driver_repos, settings.apt_arch, what="NVIDIA's CUDA repository")
    return apt.packages(name="NVIDIA driver branch (cuda-drivers-<branch>)", packages=list(settings.driver_packages))


@deploy("NVIDIA Container Toolkit")
def nvidia_container_toolkit(settings: NodeSettings) -> None:
    """Needs Docker installed first: nvidia-ctk writes Docker's daemon.json."""
    assert settings.container_toolkit_repo is not None
    vendor_apt_repos([settings.container_toolkit_repo], settings.apt_arch, what="the Container Toolkit repository")
    apt.packages(name="NVIDIA Container Toolkit", packages=list(settings.container_toolkit_packages))
    runtime = docker_nvidia_runtime(name="Docker knows the nvidia runtime")
    if not settings.in_container_or_chroot:
        systemd.service(
            name="Restart Docker to load the nvidia runtime", service="docker", restarted=True, _if=runtime.did_change
        )
