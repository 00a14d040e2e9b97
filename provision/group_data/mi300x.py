"""AMD Instinct MI300X (gfx942)."""

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

expected_gpu_archs = ["gfx942"]
kit_image_tag = "latest-rocm"  # the Makefile builds clinical-finetune-kit:$(TAG)-rocm, TAG latest by default

# --- Opt-in system tuning from AMD's MI300X system optimization guide (ROCm 6.1 docs) -----------------------------
# Nothing below is applied until set here or per host. Kernel arguments and cpupower need a reboot / systemd, so
# they are written in test roots but only take effect on a real host.
#
# Kernel arguments, e.g. ["pci=realloc=off", "amd_iommu=on", "iommu=pt"]:
#   pci=realloc=off  AMD's guide requires it when SR-IOV is disabled in the BIOS (the usual bare-metal setup);
#                    the kernel otherwise reassigns the GPUs' large BARs and can fail to map them.
#   amd_iommu=on iommu=pt  keeps the IOMMU on (some software needs it) but in passthrough mode, so GPU DMA is
#                    not translated: the guide's recommendation for peak GPU<->host bandwidth.
tune_kernel_args = []
# kernel.numa_balancing=0: automatic NUMA balancing migrates pages under the GPUs' feet and costs throughput;
# AMD's guide and its training validation steps disable it.
tune_numa_balancing_off = False
# `cpupower idle-set -d 2`: disables the deepest CPU idle state (C2) so waking a core to feed the GPUs does not
# add latency. Set to 2 to follow the guide; applied by a systemd unit at every boot.
tune_disable_cpu_idle_state = None
tune_cpupower_packages = ["linux-tools-common", "linux-tools-{kernel}"]
