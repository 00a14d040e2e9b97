"""Package sources refreshed, prerequisites and the running kernel's headers/modules (DKMS builds need them)."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt

from provision.settings import NodeSettings


@deploy("Base packages and kernel headers")
def base_packages(settings: NodeSettings) -> None:
    # cache_time: a plain apt-get update reports a change on every run, which would hide real changes.
    apt.update(name="apt package lists are recent", cache_time=settings.apt_cache_time or None)
    packages = list(settings.base_packages) + list(settings.kernel_packages)
    if packages:
        apt.packages(name="Base packages, kernel headers and modules-extra", packages=packages, no_recommends=True)
