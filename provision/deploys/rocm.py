"""AMD's kernel driver and ROCm runtime from AMD's repositories, and the device access ROCm needs.

The repositories themselves are written by apt_repo.apt_sources before apt's lists are refreshed."""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, server

from provision.settings import NodeSettings

# /dev/kfd (the compute interface) and /dev/dri/renderD* (one per GPU) must be usable by the render group.
# Ubuntu's udev already does this for renderD*; kfd's rule arrived late in some releases, so we state both.
UDEV_RULES = """\
# Written by provision/ (clinical-finetune-kit): ROCm device access for members of the render group.
KERNEL=="kfd", GROUP="render", MODE="0660"
SUBSYSTEM=="drm", KERNEL=="renderD*", GROUP="render", MODE="0660"
"""

UDEV_RULES_FILE = "/etc/udev/rules.d/70-clinical-kit-rocm.rules"

# ROCm installs its libraries under /opt/rocm; tools run on the host (rocminfo, rocm-smi) need them on the path.
LD_SO_CONF = "/opt/rocm/lib\n/opt/rocm/lib64\n"

# AMD's post-install steps put ROCm's tools on users' PATH; /etc/profile.d is read by every login shell.
PROFILE_FILE = "/etc/profile.d/rocm.sh"
PROFILE = """\
# Written by provision/ (clinical-finetune-kit): ROCm's tools on the PATH (AMD's post-install steps).
case ":$PATH:" in *:/opt/rocm/bin:*) ;; *) PATH="$PATH:/opt/rocm/bin" ;; esac
export PATH
"""


@deploy("AMD ROCm driver and runtime")
def rocm(settings: NodeSettings) -> OperationMeta:
    """Returns the driver install operation: a reboot is due when it changed."""
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

    device_access(settings)
    library_and_tool_paths()
    return driver


def device_access(settings: NodeSettings) -> None:
    rules = files.put(name="udev rules for /dev/kfd and /dev/dri/renderD*", src=StringIO(UDEV_RULES),
                      dest=UDEV_RULES_FILE, mode="644")  # fmt: skip
    if not settings.in_container_or_chroot:
        # udev reads new rules only when told; trigger re-applies them to the devices already present, so the
        # group and mode hold now, not only after the next reboot.
        server.shell(
            name="udev applies the ROCm device rules now",
            commands=["udevadm control --reload", "udevadm trigger --subsystem-match=drm --subsystem-match=kfd"],
            _if=rules.did_change,
        )


def library_and_tool_paths() -> None:
    ld_conf = files.put(
        name="ld.so path for /opt/rocm", src=StringIO(LD_SO_CONF), dest="/etc/ld.so.conf.d/rocm.conf", mode="644"
    )
    server.shell(name="Refresh the ld.so cache", commands=["ldconfig"], _if=ld_conf.did_change)
    files.put(name="/opt/rocm/bin on users' PATH", src=StringIO(PROFILE), dest=PROFILE_FILE, mode="644")
