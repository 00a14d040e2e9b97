"""Turn a host's inventory data into checked settings, before any operation is planned.

Every mistake a site can make in group_data/ or host data is caught here, so a bad run stops while pyinfra is
still planning (nothing on the host has changed) and says which key to set and where. Defaults live in
group_data/all.py (and stack.env for the release, branch and GPU targets), never here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.host_data import HostDataReader, ProvisionDataError
from provision.pins import NVIDIA_DRIVER_BRANCHES, PLATFORM_BY_GROUP, ROCM_RELEASES, RocmRelease
from provision.stack_defaults import stack_list, stack_value

__all__ = ["AptRepo", "NodeSettings", "ProvisionDataError", "Tuning", "platform_group", "resolve"]

# What a GPU target looks like on each platform: rocminfo's gfx names, nvidia-smi's compute capabilities.
ARCH_FORMS = {"rocm": (r"gfx[0-9a-f]{3,4}", "gfx names such as gfx942"), "cuda": (r"[0-9]+\.[0-9]", 'such as "9.0"')}
IMAGE_TARGETS = {"rocm": "ROCM_GPU_ARCHS", "cuda": "CUDA_ARCH_LIST"}
# The IOMMU in passthrough mode, per CPU vendor: AMD's MI300X/MI200 tuning guides give `iommu=pt` (the AMD IOMMU
# is on by default); on Intel hosts VT-d must also be switched on (`intel_iommu=on iommu=pt`).
IOMMU_PASSTHROUGH_ARGS = {"amd": ("iommu=pt",), "intel": ("intel_iommu=on", "iommu=pt")}
CPU_VENDOR_IDS = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}
TUNING_KEYS = (
    "tune_iommu_passthrough", "tune_pci_realloc_off", "tune_numa_balancing_off", "tune_disable_cpu_idle_state",
)  # fmt: skip


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
    url_key: str = ""  # the host data key the URL came from, named when it cannot be reached
    key_url_key: str = ""

    @property
    def keyring_path(self) -> str:
        # .asc: apt reads an ASCII-armoured key directly from signed-by, so no gpg --dearmor step on the host.
        return f"/etc/apt/keyrings/{self.keyring}.asc"

    def source_line(self, arch: str) -> str:
        parts = [f"deb [arch={arch} signed-by={self.keyring_path}]", self._base(), self.suite, *self.components]
        return " ".join(parts)

    def release_url(self, arch: str) -> str:
        """The Release file apt fetches first: what the URL check asks for."""
        base = self._base().replace("$(ARCH)", arch)
        return f"{base}Release" if self.suite == "/" else f"{base}/dists/{self.suite}/Release"

    def _base(self) -> str:
        # A flat repository (suite "/") is addressed as a directory: apt wants its URL to end in a slash.
        return self.url + "/" if self.suite == "/" and not self.url.endswith("/") else self.url


@dataclass(frozen=True)
class Tuning:
    """AMD's system settings for Instinct nodes, each opt-in (see group_data/all.py for the reasons)."""

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
    url_check_timeout: int
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
    nvidia_driver_branch: str | None = None
    nvidia_fabricmanager: bool = False

    @property
    def apt_repos(self) -> tuple[AptRepo, ...]:
        """Every vendor repository of this node, in the order the deploys use them."""
        toolkit = (self.container_toolkit_repo,) if self.container_toolkit_repo else ()
        return (*self.driver_repos, self.docker_repo, *toolkit)


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


def resolve(
    host_name: str,
    groups: list[str] | set[str],
    data: Any,
    facts: dict[str, str],
    extra_group_data: Sequence[Path] = (),
) -> NodeSettings:
    """Check a host's data and return what the deploys need.

    `facts` gives kernel (uname -r), codename (/etc/os-release) and cpu_vendor_id (/proc/cpuinfo) of the host;
    `extra_group_data` the run's --group-data paths, so an error names the file a bad value came from."""
    group = platform_group(host_name, groups)
    platform = PLATFORM_BY_GROUP[group]
    d = HostDataReader(host_name, group, data, extra_group_data)
    d.reject_unknown_keys()
    codename = _codename(d, facts)
    kernel = facts.get("kernel", "")
    vendor = _rocm(d, codename) if platform == "rocm" else _nvidia(d)
    return NodeSettings(
        group=group,
        platform=platform,
        os_codename=codename,
        **_host(d),
        **_packages(d, kernel),
        **vendor,
        **_docker(d, codename),
        tuning=_tuning(d, platform, kernel, facts),
        **_verification(d, platform),
    )


def _codename(d: HostDataReader, facts: dict[str, str]) -> str:
    codename = d.get("os_codename") or facts.get("codename")
    if not codename:
        raise d.error("os_codename", "is not set and the host's /etc/os-release has no VERSION_CODENAME")
    return str(codename)


def _host(d: HostDataReader) -> dict[str, Any]:
    return {
        "apt_arch": d.text("apt_arch", r"[a-z0-9]+", "a Debian architecture such as amd64"),
        "in_container_or_chroot": d.flag("in_container_or_chroot"),
        "apt_cache_time": d.count("apt_cache_time"),
        "url_check_timeout": d.count("url_check_timeout"),
        "reboot_timeout": d.count("reboot_timeout"),
        "gpu_users": d.str_list("gpu_users"),
    }


def _packages(d: HostDataReader, kernel: str) -> dict[str, Any]:
    kernel_packages: tuple[str, ...] = ()
    if d.flag("install_kernel_packages"):
        if not kernel:
            raise d.error("install_kernel_packages", "is True but the host's kernel release could not be read")
        kernel_packages = tuple(p.format(kernel=kernel) for p in d.str_list("kernel_packages"))
    return {"base_packages": d.str_list("base_packages"), "kernel_packages": kernel_packages}


def _docker(d: HostDataReader, codename: str) -> dict[str, Any]:
    repo = AptRepo(
        "docker",
        d.url("docker_repo_url"),
        codename,
        d.str_list("docker_repo_components"),
        "docker",
        d.url("docker_key_url"),
        d.sha256_or_none("docker_key_sha256"),
        url_key="docker_repo_url",
        key_url_key="docker_key_url",
    )
    return {"docker_repo": repo, "docker_packages": d.str_list("docker_packages")}


def _rocm(d: HostDataReader, codename: str) -> dict[str, Any]:
    version = _rocm_version(d)
    release = ROCM_RELEASES[version]
    base, key_url = d.url("amd_repo_base_url"), d.url("amd_key_url")
    key_sha256, pin = d.sha256_or_none("amd_key_sha256"), d.text("amd_apt_pin")
    keys = {"url_key": "amd_repo_base_url", "key_url_key": "amd_key_url"}
    repos = tuple(
        AptRepo(name, f"{base}/{path}", codename, ("main",), "rocm", key_url, key_sha256, pin, **keys)
        for name, path in (("amdgpu", release.amdgpu_repo_path), ("rocm", release.rocm_repo_path))
    )
    return {
        "rocm_version": version,
        "rocm_release": release,
        "driver_repos": repos,
        "driver_packages": d.str_list("amdgpu_driver_packages"),
        "runtime_packages": d.str_list("rocm_packages"),
        "container_toolkit_repo": None,
        "container_toolkit_packages": (),
    }


def _rocm_version(d: HostDataReader) -> str:
    return _pinned(d, "rocm_version", "ROCM_VERSION", ROCM_RELEASES,
                   "has no pins; set rocm_version to", "add the release")


def _pinned(d: HostDataReader, data_key: str, stack_key: str, known: Any, problem: str, remedy: str) -> str:
    """The host data's value of ``data_key``, else stack.env's ``stack_key``; it must be one of ``known``."""
    chosen = d.get(data_key)
    value = str(chosen) if chosen is not None else stack_value(stack_key, data_key)
    if value not in known:
        source = "" if chosen is not None else f" ({stack_key} in stack.env)"
        raise ProvisionDataError(
            f"host {d.host_name}: {data_key} {value!r}{source} {problem} one of "
            f"{', '.join(known)} in {d.where(data_key)}, or {remedy} to provision/pins.py"
        )
    return value


def _nvidia(d: HostDataReader) -> dict[str, Any]:
    branch = _nvidia_branch(d)
    cuda_repo = AptRepo(
        "cuda", d.url("cuda_repo_url"), "/", (), "cuda", d.url("cuda_key_url"), d.sha256_or_none("cuda_key_sha256"),
        d.text("cuda_apt_pin"), url_key="cuda_repo_url", key_url_key="cuda_key_url",
    )  # fmt: skip
    toolkit_repo = AptRepo(
        "nvidia-container-toolkit", d.url("container_toolkit_repo_url"), "/", (), "nvidia-container-toolkit",
        d.url("container_toolkit_key_url"), d.sha256_or_none("container_toolkit_key_sha256"),
        url_key="container_toolkit_repo_url", key_url_key="container_toolkit_key_url",
    )  # fmt: skip
    fabricmanager = d.flag("nvidia_fabricmanager")
    # Fabric Manager must be the driver's own branch (NVIDIA packages it as nvidia-fabricmanager-<branch>).
    packages = (f"cuda-drivers-{branch}", *((f"nvidia-fabricmanager-{branch}",) if fabricmanager else ()))
    return {
        "nvidia_driver_branch": branch,
        "nvidia_fabricmanager": fabricmanager,
        "driver_repos": (cuda_repo,),
        "driver_packages": packages,
        "runtime_packages": (),
        "container_toolkit_repo": toolkit_repo,
        "container_toolkit_packages": d.str_list("container_toolkit_packages"),
    }


def _nvidia_branch(d: HostDataReader) -> str:
    return _pinned(d, "nvidia_driver_branch", "NVIDIA_DRIVER_BRANCH", NVIDIA_DRIVER_BRANCHES,
                   "is not supported; set it to", "add the branch")


def _tuning(d: HostDataReader, platform: str, kernel: str, facts: dict[str, str]) -> Tuning:
    iommu, realloc_off = d.flag("tune_iommu_passthrough"), d.flag("tune_pci_realloc_off")
    numa_off = d.flag("tune_numa_balancing_off")
    idle_state = d.count("tune_disable_cpu_idle_state", optional=True)
    if platform != "rocm" and (iommu or realloc_off or numa_off or idle_state is not None):
        switches = (iommu, realloc_off, numa_off, idle_state is not None)
        key = next(k for k, on in zip(TUNING_KEYS, switches, strict=True) if on)
        raise ProvisionDataError(
            f"host {d.host_name}: tune_* settings are AMD's MI300X/MI250 guidance and are only applied to "
            f"mi250/mi300x hosts; remove them from {d.where(key)}"
        )
    vendor = _cpu_vendor(d, facts)  # checked even when unused: a wrong value is a mistake either way
    kernel_args = ("pci=realloc=off",) if realloc_off else ()
    if iommu:
        if vendor is None:
            raise d.error(
                "cpu_vendor",
                f"is None and the host's /proc/cpuinfo gives vendor_id {facts.get('cpu_vendor_id') or 'nothing'!r}, "
                "so the IOMMU arguments of tune_iommu_passthrough cannot be chosen; set cpu_vendor to amd or intel",
            )
        kernel_args += IOMMU_PASSTHROUGH_ARGS[vendor]
    cpupower = tuple(p.format(kernel=kernel) for p in d.str_list("tune_cpupower_packages"))
    return Tuning(kernel_args, numa_off, idle_state, cpupower)


def _cpu_vendor(d: HostDataReader, facts: dict[str, str]) -> str | None:
    """The CPU vendor (amd, intel) from host data, else from the host's /proc/cpuinfo; None when neither says."""
    chosen = d.get("cpu_vendor")
    if chosen is not None:
        if chosen not in IOMMU_PASSTHROUGH_ARGS:
            raise d.error("cpu_vendor", f"must be one of {', '.join(IOMMU_PASSTHROUGH_ARGS)} or None (got {chosen!r})")
        return str(chosen)
    return CPU_VENDOR_IDS.get(facts.get("cpu_vendor_id", ""))


def _verification(d: HostDataReader, platform: str) -> dict[str, Any]:
    tarball = d.get("kit_image_tarball")
    if tarball is not None and not Path(tarball).is_file():
        raise d.error("kit_image_tarball", f"names {tarball!r}, which is not a file on this (the control) machine")
    image_name, image_tag = str(d.required("kit_image_name")), str(d.required("kit_image_tag"))
    if ":" in image_name.rsplit("/", 1)[-1]:
        raise d.error(
            "kit_image_name", f"must be the name without a tag; the tag is kit_image_tag (got {image_name!r})"
        )
    return {
        "verify_gpus": d.flag("verify_gpus"),
        "expected_gpu_count": _expected_gpu_count(d),
        "expected_gpu_archs": _expected_archs(d, platform),
        "kit_image": f"{image_name}:{image_tag}",
        "kit_image_tarball": tarball,
        "verify_kit_image": d.flag("verify_kit_image"),
        "kit_checks_command": d.text("kit_checks_command"),
    }


def _expected_gpu_count(d: HostDataReader) -> int | None:
    count = d.count("expected_gpu_count", optional=True)
    if count == 0:
        # The GPU check also requires at least one GPU, so 0 could never pass: refuse it before any change.
        raise d.error(
            "expected_gpu_count",
            "is 0, which no node can pass (the check also needs at least one GPU); set the number of GPUs "
            "(an MI250 card counts as two), or None to accept any number above zero",
        )
    return count


def _expected_archs(d: HostDataReader, platform: str) -> tuple[str, ...]:
    """The group's GPU targets, checked for form and against what the image is compiled for (stack.env)."""
    stack_key = IMAGE_TARGETS[platform]
    if d.get("expected_gpu_archs") is None:
        return stack_list(stack_key, "expected_gpu_archs")
    archs = d.str_list("expected_gpu_archs")
    pattern, form = ARCH_FORMS[platform]
    malformed = [arch for arch in archs if not re.fullmatch(pattern, arch)]
    if malformed:
        raise d.error("expected_gpu_archs", f"must list {form} for {d.group} hosts (got {', '.join(malformed)})")
    if archs:
        image_targets = stack_list(stack_key, "expected_gpu_archs")
        missing = [arch for arch in archs if arch not in image_targets]
        if missing:
            raise d.error(
                "expected_gpu_archs",
                f"lists {', '.join(missing)}, which the image is not built for ({stack_key}="
                f"{';'.join(image_targets)} in stack.env)",
            )
    return archs
