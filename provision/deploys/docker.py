"""Docker Engine with the Compose and buildx plugins from Docker's repository (written by apt_repo.apt_sources)."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt, server, systemd

from provision.settings import NodeSettings


@deploy("Docker Engine")
def docker_engine(settings: NodeSettings) -> None:
    apt.packages(name="Docker Engine, CLI, containerd, buildx and compose", packages=list(settings.docker_packages))

    # Membership of the docker group is root on this host in all but name (a member can mount / into a
    # container); docs/provisioning.md says so. Only users named in gpu_users get it.
    server.group(name="docker group exists", group="docker", system=True)
    for user in settings.gpu_users:
        server.user(name=f"{user} is in docker", user=user, groups=["docker"], append=True, ensure_home=False)

    if not settings.in_container_or_chroot:
        systemd.service(name="Docker runs and starts at boot", service="docker", running=True, enabled=True)
