"""Turn a host's inventory data into checked settings, before any operation is planned.

Every mistake a site can make in group_data/ or host data is caught here, so a bad run stops while pyinfra is
still planning (nothing on the host has changed) and says which key to set and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import PyinfraError

from provision.pins import NVIDIA_DRIVER_BRANCHES, PLATFORM_BY_GROUP, ROCM_RELEASES, RocmRelease

GROUP_DATA_DIR = "provision/group_data"
URL_SCHEMES = ("https://", "http://", "file:/")


class ProvisionDataError(PyinfraError, ValueError):
    """Host data that cannot be provisioned; the message names the key and what it should be.

    A PyinfraError, so the pyinfra CLI prints the message alone instead of a traceback."""


@dataclass(frozen=True)
class AptRepo:
    """One vendor apt repository: its signing key, its source line and an optional pin."""

    name: str  # file stem under /etc/apt/sources.list.d and /etc/apt/preferences.d
    url: str
    suite: str  # "/" for flat repositories (NVIDIA's)
    components: tuple[str, ...]
    keyring: str  # file stem under /etc/apt/keyrings; repositories signed by one key share it
    key_url: str
    key_sha256: str | None
    pin: str | None = None  # an apt_preferences "Pin:" value, e.g. "release o=repo.radeon.com"
    pin_priority: int = 600

    @property
    def keyring_path(self) -> str:
        # .asc: apt reads an ASCII-armoured key directly from signed-by, so no gpg --dearmor step on the host.
        return f"/etc/apt/keyrings/{self.keyring}.asc"

    def source_line(self, arch: str) -> str:
        # A flat repository (suite "/") is addressed as a directory: apt wants its URL to end in a slash.
        url = self.url + "/" if self.suite == "/" and not self.url.endswith("/") else self.url
        parts = [f"deb [arch={arch} signed-by={self.keyring_path}]", url, self.suite, *self.components]
        return " ".join(parts)


@dataclass(frozen=True)
class Tuning:
    """AMD's MI300X system settings, each opt-in (see group_data/mi300x.py for the reasons)."""

    kernel_args: tuple[str, ...] = ()
    numa_balancing_off: bool = False
    disable_cpu_idle_state: int | None = None
    cpupower_packages: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.kernel_args or self.numa_balancing_off or self.disable_cpu_idle_state is not None)


@dataclass(frozen=True)
class NodeSettings:
    group: str
    platform: str  # "rocm" or "cuda"
    os_codename: str
    apt_arch: str
    in_container_or_chroot: bool
    apt_cache_time: int
    gpu_users: tuple[str, ...]
    base_packages: tuple[str, ...]
    kernel_packages: tuple[str, ...]
    driver_repos: tuple[AptRepo, ...]
    driver_packages: tuple[str, ...]
    runtime_packages: tuple[str, ...]
    docker_repo: AptRepo
    docker_packages: tuple[str, ...]
    container_toolkit_repo: AptRepo | None
    container_toolkit_packages: tuple[str, ...]
    tuning: Tuning
    reboot_timeout: int
    verify_gpus: bool
    expected_gpu_count: int | None
    expected_gpu_archs: tuple[str, ...]
    kit_image: str
    kit_image_tarball: str | None
    verify_kit_image: bool
    kit_checks_command: str
    rocm_release: RocmRelease | None = None
    rocm_version: str | None = None


def platform_group(host_name: str, groups: list[str] | set[str]) -> str:
    """The one GPU group (mi250, mi300x or nvidia) a host belongs to."""
    gpu_groups = sorted(set(groups) & PLATFORM_BY_GROUP.keys())
    if len(gpu_groups) != 1:
        found = ", ".join(gpu_groups) or "none"
        raise ProvisionDataError(
            f"host {host_name}: must be in exactly one of the groups {', '.join(PLATFORM_BY_GROUP)} "
            f"(found: {found}); put it under one of those groups in the inventory's hosts file"
        )
    return gpu_groups[0]


class _Data:
    """Reads keys from pyinfra host data and turns each problem into a ProvisionDataError that says where to fix it."""

    def __init__(self, host_name: str, group: str, data: Any):
        self.host_name = host_name
        self.group = group
        self._data = data

    def where(self) -> str:
        return f"{GROUP_DATA_DIR}/{self.group}.py or {GROUP_DATA_DIR}/all.py (or this host's data)"

    def error(self, key: str, problem: str) -> ProvisionDataError:
        return ProvisionDataError(f"host {self.host_name}: {key} {problem}; set it in {self.where()}")

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def required(self, key: str) -> Any:
        value = self._data.get(key)
        if value is None or value == "" or value == []:
            raise self.error(key, "is not set")
        return value

    def url(self, key: str) -> str:
        value = self.required(key)
        if not isinstance(value, str) or not value.startswith(URL_SCHEMES):
            raise self.error(key, f"must be a URL starting with {', '.join(URL_SCHEMES)} (got {value!r})")
        return value.rstrip("/") if not value.endswith("$(ARCH)") else value

    def str_list(self, key: str, default: list[str] | None = None) -> tuple[str, ...]:
        value = self._data.get(key, default if default is not None else [])
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
            raise self.error(key, f"must be a list of non-empty strings (got {value!r})")
        return tuple(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be True or False (got {value!r})")
        return value

    def int_or_none(self, key: str) -> int | None:
        value = self._data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise self.error(key, f"must be a non-negative whole number or None (got {value!r})")
        return value

    def sha256_or_none(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise self.error(key, f"must be a lowercase 64-character sha256 hex digest or None (got {value!r})")
        return value


def _rocm(d: _Data, codename: str) -> tuple[str, RocmRelease, tuple[AptRepo, ...]]:
    version = str(d.required("rocm_version"))
    release = ROCM_RELEASES.get(version)
    if release is None:
        raise ProvisionDataError(
            f"host {d.host_name}: rocm_version {version!r} has no pins; set rocm_version to one of "
            f"{', '.join(ROCM_RELEASES)} in {d.where()}, or add the release to provision/pins.py"
        )
    base = d.url("amd_repo_base_url")
    key_url = d.url("amd_key_url")
    key_sha256 = d.sha256_or_none("amd_key_sha256")
    pin = d.required("amd_apt_pin")
    repos = (
        AptRepo("amdgpu", f"{base}/{release.amdgpu_repo_path}", codename, ("main",), "rocm", key_url, key_sha256, pin),
        AptRepo("rocm", f"{base}/{release.rocm_repo_path}", codename, ("main",), "rocm", key_url, key_sha256, pin),
    )
    return version, release, repos


def _nvidia(d: _Data) -> tuple[AptRepo, tuple[str, ...], AptRepo]:
    branch = str(d.required("nvidia_driver_branch"))
    if branch not in NVIDIA_DRIVER_BRANCHES:
        raise ProvisionDataError(
            f"host {d.host_name}: nvidia_driver_branch {branch!r} is not supported; set it to one of "
            f"{', '.join(NVIDIA_DRIVER_BRANCHES)} in {d.where()}, or add the branch to provision/pins.py"
        )
    cuda_repo = AptRepo(
        "cuda",
        d.url("cuda_repo_url"),
        "/",
        (),
        "cuda",
        d.url("cuda_key_url"),
        d.sha256_or_none("cuda_key_sha256"),
        d.required("cuda_apt_pin"),
    )
    driver_packages = [f"cuda-drivers-{branch}"]
    if d.flag("nvidia_fabricmanager"):
        driver_packages.append(f"nvidia-fabricmanager-{branch}")
    toolkit_repo = AptRepo(
        "nvidia-container-toolkit",
        d.url("container_toolkit_repo_url"),
        "/",
        (),
        "nvidia-container-toolkit",
        d.url("container_toolkit_key_url"),
        d.sha256_or_none("container_toolkit_key_sha256"),
    )
    return cuda_repo, tuple(driver_packages), toolkit_repo


def _tuning(d: _Data, platform: str) -> Tuning:
    kernel_args = d.str_list("tune_kernel_args")
    numa_off = d.flag("tune_numa_balancing_off")
    idle_state = d.int_or_none("tune_disable_cpu_idle_state")
    if platform != "rocm" and (kernel_args or numa_off or idle_state is not None):
        raise ProvisionDataError(
            f"host {d.host_name}: tune_* settings are AMD's MI300X/MI250 guidance and are only applied to "
            f"mi250/mi300x hosts; remove them from {d.where()}"
        )
    return Tuning(kernel_args, numa_off, idle_state, d.str_list("tune_cpupower_packages"))


def resolve(host_name: str, groups: list[str] | set[str], data: Any, facts: dict[str, str]) -> NodeSettings:
    """Check a host's data and return what the deploys need. `facts` gives kernel (uname -r) and codename."""
    group = platform_group(host_name, groups)
    platform = PLATFORM_BY_GROUP[group]
    d = _Data(host_name, group, data)

    codename = d.get("os_codename") or facts.get("codename")
    if not codename:
        raise d.error("os_codename", "is not set and the host's /etc/os-release has no VERSION_CODENAME")
    kernel = facts.get("kernel", "")

    kernel_packages: tuple[str, ...] = ()
    if d.flag("install_kernel_packages", True):
        if not kernel:
            raise d.error("install_kernel_packages", "is True but the host's kernel release could not be read")
        kernel_packages = tuple(p.format(kernel=kernel) for p in d.str_list("kernel_packages"))

    docker_repo = AptRepo(
        "docker",
        d.url("docker_repo_url"),
        codename,
        d.str_list("docker_repo_components", ["stable"]),
        "docker",
        d.url("docker_key_url"),
        d.sha256_or_none("docker_key_sha256"),
    )

    rocm_version = rocm_release = None
    toolkit_repo = None
    if platform == "rocm":
        rocm_version, rocm_release, driver_repos = _rocm(d, codename)
        driver_packages = d.str_list("amdgpu_driver_packages")
        runtime_packages = d.str_list("rocm_packages")
        toolkit_packages: tuple[str, ...] = ()
    else:
        cuda_repo, driver_packages, toolkit_repo = _nvidia(d)
        driver_repos = (cuda_repo,)
        runtime_packages = ()
        toolkit_packages = d.str_list("container_toolkit_packages")

    tuning = _tuning(d, platform)
    tuning = Tuning(
        tuning.kernel_args,
        tuning.numa_balancing_off,
        tuning.disable_cpu_idle_state,
        tuple(p.format(kernel=kernel) for p in tuning.cpupower_packages),
    )

    users = d.str_list("gpu_users")
    tarball = d.get("kit_image_tarball")
    if tarball is not None and not Path(tarball).is_file():
        raise d.error("kit_image_tarball", f"names {tarball!r}, which is not a file on this (the control) machine")

    image_name, image_tag = str(d.required("kit_image_name")), str(d.required("kit_image_tag"))
    if ":" in image_name.rsplit("/", 1)[-1]:
        raise d.error(
            "kit_image_name", f"must be the name without a tag; the tag is kit_image_tag (got {image_name!r})"
        )
    image = f"{image_name}:{image_tag}"

    reboot_timeout = d.int_or_none("reboot_timeout")
    return NodeSettings(
        group=group,
        platform=platform,
        os_codename=codename,
        apt_arch=d.required("apt_arch"),
        in_container_or_chroot=d.flag("in_container_or_chroot"),
        apt_cache_time=d.int_or_none("apt_cache_time") or 0,
        gpu_users=users,
        base_packages=d.str_list("base_packages"),
        kernel_packages=kernel_packages,
        driver_repos=driver_repos,
        driver_packages=driver_packages,
        runtime_packages=runtime_packages,
        docker_repo=docker_repo,
        docker_packages=d.str_list("docker_packages"),
        container_toolkit_repo=toolkit_repo,
        container_toolkit_packages=toolkit_packages,
        tuning=tuning,
        reboot_timeout=reboot_timeout if reboot_timeout is not None else 900,
        verify_gpus=d.flag("verify_gpus", True),
        expected_gpu_count=d.int_or_none("expected_gpu_count"),
        expected_gpu_archs=d.str_list("expected_gpu_archs"),
        kit_image=image,
        kit_image_tarball=tarball,
        verify_kit_image=d.flag("verify_kit_image", True),
        kit_checks_command=d.required("kit_checks_command"),
        rocm_release=rocm_release,
        rocm_version=rocm_version,
    )
