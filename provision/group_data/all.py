"""Every setting a node has, with its default: the ONE place defaults live (provision/settings.py has none).

Override per group (group_data/<group>.py holds only what differs per GPU model) or per host (hosts file `data:`).
A key that is not defined here is rejected before any change, with the nearest known name (a typo such as
`nvidia_fabric_manager` would otherwise be ignored silently).
"""

# --- How the host is reached and what it is -------------------------------------------------------------------
# Taken from /etc/os-release when None. Vendor repositories are per codename: Ubuntu 22.04 is "jammy".
os_codename = None
apt_arch = "amd64"
# "amd" or "intel"; None reads vendor_id from the host's /proc/cpuinfo. Decides the IOMMU kernel arguments.
cpu_vendor = None
# True only for test roots (pyinfra @chroot / @docker targets): no kernel, no systemd, no /proc there, so
# sysctl -w, service starts, udev reloads, update-grub and reboots are skipped; everything else still runs.
in_container_or_chroot = False
# A plain `apt-get update` counts as a change every run; refresh the lists at most this often (seconds) unless
# a source, key or pin changed since the last refresh (then always).
apt_cache_time = 3600
# How long to wait for a node to come back after a driver reboot (seconds). Servers with much RAM POST slowly.
reboot_timeout = 900
# Before any change, every repository and key URL is requested (HEAD) from the node itself, so an unreachable
# mirror is named up front instead of failing half-way as `curl: (7)` or `Unable to locate package`.
url_check_timeout = 10

# --- Who gets GPU access ------------------------------------------------------------------------------------------
# Existing accounts added to render + video (AMD) and docker. docker group membership is root-equivalent on the
# host (docs/provisioning.md): list only people who would be trusted with sudo.
gpu_users = []

# --- Packages ---------------------------------------------------------------------------------------------------------
# ca-certificates for https repositories; gnupg for sites that inspect keys. curl must already be on the node
# (Ubuntu server images have it): the URL check and the key downloads run it before apt is touched.
base_packages = ["ca-certificates", "curl", "gnupg"]
# Out-of-tree drivers (amdgpu-dkms, NVIDIA's DKMS modules) are built against the running kernel; {kernel} is
# `uname -r`. linux-modules-extra carries drivers Ubuntu's cloud/generic kernels leave out of the base package.
install_kernel_packages = True
kernel_packages = ["linux-headers-{kernel}", "linux-modules-extra-{kernel}"]

# --- Docker Engine (docs.docker.com/engine/install/ubuntu) ------------------------------------------------------
# For a mirror, change the two URLs; set docker_key_sha256 to pin the key you checked.
docker_repo_url = "https://download.docker.com/linux/ubuntu"
docker_repo_components = ["stable"]
docker_key_url = "https://download.docker.com/linux/ubuntu/gpg"
docker_key_sha256 = None
# Pin versions with "name=version" entries, e.g. "docker-ce=5:27.3.1-1~ubuntu.22.04~jammy".
docker_packages = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]

# --- AMD hosts (groups mi250, mi300x) ----------------------------------------------------------------------------
# None: ROCM_VERSION from stack.env, the release the ROCm image is built for. Otherwise one of the releases in
# provision/pins.py (ROCM_RELEASES); the repository paths come from there.
rocm_version = None
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

# Opt-in system tuning from AMD's system optimization guides (MI300X; MI200 for MI250), AMD hosts only. Nothing
# below is applied until set per group or host. Kernel arguments need a reboot and cpupower needs systemd, so in
# test roots they are written but only take effect on a real host.
#
# IOMMU in passthrough mode: GPU DMA is not translated, the guides' setting for peak GPU<->host bandwidth. The
# arguments follow the CPU vendor: AMD CPUs `iommu=pt`; Intel CPUs `intel_iommu=on iommu=pt` (Intel's VT-d is off
# unless asked for). Appended to GRUB_CMDLINE_LINUX as AMD's guide does.
tune_iommu_passthrough = False
# pci=realloc=off: AMD's guide asks for it when SR-IOV is disabled in the BIOS (the usual bare-metal setup); the
# kernel otherwise reassigns the GPUs' large BARs and can fail to map them.
tune_pci_realloc_off = False
# kernel.numa_balancing=0: automatic NUMA balancing migrates pages under the GPUs' feet and costs throughput;
# AMD's guide and its training validation steps disable it.
tune_numa_balancing_off = False
# `cpupower idle-set -d 2`: disables the deepest CPU idle state (C2) so waking a core to feed the GPUs does not
# add latency. Set to 2 to follow the guide; applied by a systemd unit at every boot.
tune_disable_cpu_idle_state = None
tune_cpupower_packages = ["linux-tools-common", "linux-tools-{kernel}"]

# --- NVIDIA hosts (group nvidia) ---------------------------------------------------------------------------------
# None: NVIDIA_DRIVER_BRANCH from stack.env. Otherwise a branch from provision/pins.py (NVIDIA_DRIVER_BRANCHES);
# installed as cuda-drivers-<branch>.
nvidia_driver_branch = None
# HGX/DGX boards with NVSwitch need the Fabric Manager of the same branch installed, enabled and running, or the
# GPUs never initialise (NVIDIA's Fabric Manager user guide).
nvidia_fabricmanager = False
# NVIDIA's CUDA repository for Ubuntu 22.04 (a flat repository: suite "/"). For a mirror, change URL and key URL.
cuda_repo_url = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64"
cuda_key_url = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/3bf863cc.pub"
cuda_key_sha256 = None
# NVIDIA's own pin (cuda-ubuntu2204.pin) gives its repository priority 600 by label, so Ubuntu's archive builds
# of the same driver do not win.
cuda_apt_pin = "release l=NVIDIA CUDA"
# NVIDIA Container Toolkit (docs.nvidia.com/datacenter/cloud-native/container-toolkit).
# $(ARCH) is expanded by apt itself, as in NVIDIA's published list file.
container_toolkit_repo_url = "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)"
container_toolkit_key_url = "https://nvidia.github.io/libnvidia-container/gpgkey"
container_toolkit_key_sha256 = None
container_toolkit_packages = ["nvidia-container-toolkit"]

# --- Verification -----------------------------------------------------------------------------------------------------
verify_gpus = True
expected_gpu_count = None  # e.g. 8; None accepts any number above zero; 0 is refused (an MI250 card counts as 2)
# gfx names (AMD) or compute capabilities such as "9.0" (NVIDIA) the node's GPUs may have. None: every target the
# image is built for (ROCM_GPU_ARCHS / CUDA_ARCH_LIST in stack.env); each group narrows it to its own model.
expected_gpu_archs = None
# The kit's image is kit_image_name:kit_image_tag (the Makefile's IMAGE and TAG); each group sets its tag.
verify_kit_image = True
kit_image_name = "clinical-finetune-kit"
kit_image_tag = None
# Air-gapped sites: path on the control machine to a `docker save` tarball; it is copied over and loaded instead
# of pulling.
kit_image_tarball = None
kit_checks_command = "python -m checks --json"
