"""AMD's kernel driver and ROCm runtime from AMD's repositories, and the device access ROCm needs."""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server

from provision.deploys.apt_repo import vendor_apt_repos
from provision.settings import NodeSettings

# /dev/kfd (the compute interface) and /dev/dri/renderD* (one per GPU) must be usable by the render group.
# Ubuntu's udev already does this for renderD*; kfd's rule arrived late in some releases, so we state both.
UDEV_RULES = """\
# Written by provision/ (clinical-finetune-kit): ROCm device access for members of the render group.
KERNEL=="kfd", GROUP="render", MODE="0660"
SUBSYSTEM=="drm", KERNEL=="renderD*", GROUP="render", MODE="0660"
"""

# ROCm installs its libraries under /opt/rocm; tools run on the host (rocminfo, rocm-smi) need them on the path.
LD_SO_CONF = "/opt/rocm/lib\n/opt/rocm/lib64\n"


@deploy("AMD ROCm driver and runtime")
def rocm(settings: NodeSettings) -> OperationMeta:
    """Returns the driver install operation: a reboot is due when it changed."""
    vendor_apt_repos(settings.driver_repos, settings.apt_arch, what="AMD's repositories")

    assert settings.rocm_release is not None
    # The same release AMD's quick start installs with amdgpu-install_<version>_all.deb; named so a site can
    # match the plan against AMD's instructions.
    release = f"ROCm {settings.rocm_version}, amdgpu-install {settings.rocm_release.amdgpu_install_version}"
    driver = apt.packages(
        name=f"amdgpu kernel driver ({release})",
        packages=list(settings.driver_packages),
        no_recommends=True,
    )
    apt.packages(name="ROCm runtime packages", packages=list(settings.runtime_packages), no_recommends=True)

    # Ubuntu has had a render group since 20.04; the group is created here for hosts (and test roots) without one.
    server.group(name="render group exists", group="render", system=True)
    server.group(name="video group exists", group="video", system=True)
    for user in settings.gpu_users:
        server.user(
            name=f"{user} is in render and video",
            user=user,
            groups=["render", "video"],
            append=True,
            ensure_home=False,
        )

    files.put(
        name="udev rules for /dev/kfd and /dev/dri/renderD*",
        src=StringIO(UDEV_RULES),
        dest="/etc/udev/rules.d/70-clinical-kit-rocm.rules",
        mode="644",
    )
    ld_conf = files.put(
        name="ld.so path for /opt/rocm", src=StringIO(LD_SO_CONF), dest="/etc/ld.so.conf.d/rocm.conf", mode="644"
    )
    server.shell(name="Refresh the ld.so cache", commands=["ldconfig"], _if=ld_conf.did_change)
    return driver
