"""AMD Instinct MI250/MI250X (gfx90a). rocminfo lists each card as two GPUs (one per GCD)."""

# --- ROCm: one of the releases in provision/pins.py (ROCM_RELEASES); its repository paths come from there ----------
rocm_version = "6.1.2"
# AMD's repositories. For a mirror or an air-gapped copy, change these two (the paths under the base stay AMD's).
amd_repo_base_url = "https://repo.radeon.com"
amd_key_url = "https://repo.radeon.com/rocm/rocm.gpg.key"
amd_key_sha256 = None  # set to the sha256 of the key you checked, and a changed key fails the run
# Priority 600 for everything AMD publishes: Ubuntu and Debian carry their own rocminfo, hipcc, rocm-cmake with
# higher version numbers, and apt would otherwise pick those. AMD's install guide uses this exact pin.
amd_apt_pin = "release o=repo.radeon.com"
amdgpu_driver_packages = ["amdgpu-dkms"]
# The host only needs the runtime and the tools that verify it: the images carry the ROCm userspace they need.
# ["rocm"] installs AMD's full SDK (tens of GB) instead.
rocm_packages = ["rocm-hip-runtime", "rocminfo", "rocm-smi-lib"]

expected_gpu_archs = ["gfx90a"]
kit_image_tag = "latest-rocm"  # the Makefile builds clinical-finetune-kit:$(TAG)-rocm, TAG latest by default
