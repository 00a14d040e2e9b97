"""Data for every node. Override per group (group_data/<group>.py) or per host (hosts file `data:`)."""

# --- How the host is reached and what it is -------------------------------------------------------------------
# Taken from /etc/os-release when None. Vendor repositories are per codename: Ubuntu 22.04 is "jammy".
os_codename = None
apt_arch = "amd64"
# True only for test roots (pyinfra @chroot / @docker targets): no kernel, no systemd, no /proc there, so
# sysctl -w, service starts, update-grub and reboots are skipped; everything else still runs.
in_container_or_chroot = False
# A plain `apt-get update` counts as a change every run; refresh the lists at most this often (seconds).
apt_cache_time = 3600
# How long to wait for a node to come back after a driver reboot (seconds). Servers with much RAM POST slowly.
reboot_timeout = 900

# --- Who gets GPU access ------------------------------------------------------------------------------------------
# Existing accounts added to render + video (AMD) and docker. docker group membership is root-equivalent on the
# host (docs/provisioning.md): list only people who would be trusted with sudo.
gpu_users = []

# --- Packages ---------------------------------------------------------------------------------------------------------
# curl downloads the vendor keys on the host; gnupg lets apt check them; ca-certificates for https repositories.
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

# --- Verification -----------------------------------------------------------------------------------------------------
verify_gpus = True
expected_gpu_count = None  # e.g. 8; None accepts any number above zero
# The kit's image is kit_image_name:kit_image_tag (the Makefile's IMAGE and TAG); each group sets its tag.
verify_kit_image = True
kit_image_name = "clinical-finetune-kit"
# Air-gapped sites: path on the control machine to a `docker save` tarball; it is copied over and loaded instead
# of pulling.
kit_image_tarball = None
kit_checks_command = "python -m checks --json"
