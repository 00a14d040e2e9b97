"""NVIDIA data-centre GPUs (A100, H100, H200): driver from NVIDIA's CUDA repository plus the Container Toolkit."""

# --- Driver: a branch from provision/pins.py (NVIDIA_DRIVER_BRANCHES), installed as cuda-drivers-<branch> ---------
nvidia_driver_branch = "550"
# HGX/DGX boards with NVSwitch need the Fabric Manager of the same branch, or the GPUs never initialise.
nvidia_fabricmanager = False
# NVIDIA's CUDA repository for Ubuntu 22.04 (a flat repository: suite "/"). For a mirror, change URL and key URL.
cuda_repo_url = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64"
cuda_key_url = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/3bf863cc.pub"
cuda_key_sha256 = None
# NVIDIA's own pin (cuda-ubuntu2204.pin) gives its repository priority 600 by label, so Ubuntu's archive builds
# of the same driver do not win.
cuda_apt_pin = "release l=NVIDIA CUDA"

# --- NVIDIA Container Toolkit (docs.nvidia.com/datacenter/cloud-native/container-toolkit) ------------------------
# $(ARCH) is expanded by apt itself, as in NVIDIA's published list file.
container_toolkit_repo_url = "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)"
container_toolkit_key_url = "https://nvidia.github.io/libnvidia-container/gpgkey"
container_toolkit_key_sha256 = None
container_toolkit_packages = ["nvidia-container-toolkit"]

# Compute capabilities that may appear, e.g. ["8.0"] (A100) or ["9.0"] (H100/H200); empty accepts any.
expected_gpu_archs = []
kit_image_tag = "latest-cuda"  # the Makefile builds clinical-finetune-kit:$(TAG)-cuda, TAG latest by default
