"""Base packages every node needs, and the kernel headers/modules (DKMS builds need them)."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt

from provision.settings import NodeSettings


@deploy("Base packages and kernel headers")
def base_packages(settings: NodeSettings) -> None:
    # The package lists were refreshed by apt_sources, after every vendor source was written.
    packages = list(settings.base_packages) + list(settings.kernel_packages)
    if packages:
        apt.packages(name="Base packages, kernel headers and modules-extra", packages=packages, no_recommends=True)
