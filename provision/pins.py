"""Vendor releases this kit knows how to install, and where their apt repositories live.

Only releases listed here are accepted (see provision/settings.py); adding one means checking AMD's or NVIDIA's
install page for that release and adding a row, not guessing a path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RocmRelease:
    amdgpu_repo_path: str  # under the AMD base URL: the amdgpu (kernel driver, amdgpu-dkms) repository
    rocm_repo_path: str  # under the AMD base URL: the ROCm userspace repository
    amdgpu_install_version: str  # the amdgpu-install .deb of the same release (AMD's quick-start installer)


# Paths as published on repo.radeon.com for Ubuntu (suite = OS codename, component "main").
# 6.1.0 was published under the short "6.1" folder; later point releases use the full version.
# The images are built against ROCm 6.1.x userspace (ROCM_VERSION in stack.env), so the host driver stays in 6.1.x.
# The release a host gets by default is stack.env's ROCM_VERSION (the image's); it must be a row here.
ROCM_RELEASES: dict[str, RocmRelease] = {
    "6.1.0": RocmRelease("amdgpu/6.1/ubuntu", "rocm/apt/6.1", "6.1.60100-1"),
    "6.1.1": RocmRelease("amdgpu/6.1.1/ubuntu", "rocm/apt/6.1.1", "6.1.60101-1"),
    "6.1.2": RocmRelease("amdgpu/6.1.2/ubuntu", "rocm/apt/6.1.2", "6.1.60102-1"),
    "6.1.3": RocmRelease("amdgpu/6.1.3/ubuntu", "rocm/apt/6.1.3", "6.1.60103-1"),
}

# NVIDIA data-centre driver branches from the CUDA apt repository (meta package cuda-drivers-<branch>).
# The CUDA image runs PyTorch 2.3.1 built for CUDA 12.1, which needs a driver >= 530: every branch here
# qualifies. 535 and 550 are long-term support branches; 560 is a production branch.
# The default branch is stack.env's NVIDIA_DRIVER_BRANCH; it must be listed here.
NVIDIA_DRIVER_BRANCHES: tuple[str, ...] = ("535", "550", "560")

# Groups an inventory may use, and the GPU platform each one provisions.
PLATFORM_BY_GROUP: dict[str, str] = {
    "mi250": "rocm",
    "mi300x": "rocm",
    "nvidia": "cuda",
}
