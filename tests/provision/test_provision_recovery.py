"""Mistakes in the data are stopped before any change or fixed by a rerun: the deploy against chroot roots and the
signed fake repositories on 127.0.0.1, through the pyinfra CLI as users run it.

- A repository host that cannot be reached (a closed loopback port) is named, with its data key, before anything
  on the node changes.
- A source that passes that check but breaks `apt-get update` (a mirror with a Release file and nothing else, a key
  URL serving another vendor's key) fails the first run; after the package lists have aged past apt_cache_time,
  fixing the data and rerunning converges, with no file removed by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from . import fake_repo
from .provision_harness import (
    amd_host_data,
    grand_total,
    nvidia_host_data,
    prepare_root,
    run_pyinfra,
    write_hosts_file,
)
from .test_provision_chroot import apt_files, installed, output

pytestmark = [pytest.mark.chroot, pytest.mark.slow]

APT_STAMP = "var/lib/apt/periodic/update-success-stamp"
TWO_HOURS = 2 * 3600  # older than all.py's apt_cache_time (an hour)


def closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: bound, then released, so connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node(tmp_path: Path, root: Path, data: dict, name: str = "hosts.yaml") -> Path:
    return write_hosts_file(tmp_path / name, {"mi300x": [{"name": f"@chroot/{root}", "data": data}]})


def age_apt_state(root: Path, seconds: int) -> None:
    """Make the last apt refresh, and every apt file, look `seconds` old (as on a node left alone for a while)."""
    then = time.time() - seconds
    paths = [root / APT_STAMP] + [
        path for folder in ("etc/apt/sources.list.d", "etc/apt/keyrings", "etc/apt/preferences.d")
        for path in (root / folder).glob("*")
    ]  # fmt: skip
    for path in paths:
        if path.exists():
            os.utime(path, (then, then))


def test_an_unreachable_repository_host_is_named_before_any_change(fake_repos, tmp_path):
    root = prepare_root(tmp_path / "root", fake_repos)
    port = closed_loopback_port()
    data = {**amd_host_data(fake_repos), "amd_repo_base_url": f"http://127.0.0.1:{port}/amd"}

    run = run_pyinfra(node(tmp_path, root, data), timeout=120)

    text = " ".join(output(run).split())
    assert run.returncode != 0
    assert f"host @chroot/{root}: cannot reach from the host, before any change" in text, text[-3000:]
    assert f"amd_repo_base_url: http://127.0.0.1:{port}/amd/amdgpu/6.1.2/ubuntu/dists/bookworm/Release" in text
    assert "curl: (7)" in text  # curl's own reason, next to the key to fix
    assert "--> Starting operation" not in text
    assert apt_files(root) == ["etc/apt/sources.list.d/distro.list"]


def half_mirror(repos: fake_repo.FakeRepos) -> str:
    """A mirror of AMD's repositories that carries each Release file and nothing else (a sync cut short)."""
    mirror = repos.root / "half-mirror"
    for release in (repos.root / "amd").glob("**/dists/*/Release"):
        target = mirror / release.relative_to(repos.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(release, target)
    return f"{repos.base_url}/half-mirror/amd"


@pytest.mark.parametrize("mistake", ["repository-url", "key-url"])
def test_a_broken_source_is_fixed_by_rerunning_after_the_cache_aged(fake_repos, tmp_path, mistake):
    root = prepare_root(tmp_path / "root", fake_repos)
    good = {**amd_host_data(fake_repos), "amd_key_sha256": None}  # the key on the node follows its URL
    if mistake == "repository-url":
        bad = {**good, "amd_repo_base_url": half_mirror(fake_repos)}
    else:
        bad = {**good, "amd_key_url": f"{fake_repos.base_url}/{fake_repo.KEY_PATHS['docker']}"}

    broken = run_pyinfra(node(tmp_path, root, bad, "bad.yaml"))
    assert broken.returncode != 0, output(broken)[-3000:]
    failed_at = output(broken)[output(broken).index("apt package lists are current") :]
    assert "E: The repository" in failed_at and "is not signed" in failed_at  # the refresh failed, naming it
    assert (root / "etc/apt/sources.list.d/rocm.list").exists()  # the broken state a rerun must repair
    assert not installed(root, "amdgpu-dkms")

    age_apt_state(root, TWO_HOURS)
    fixed = run_pyinfra(node(tmp_path, root, good, "good.yaml"))
    assert fixed.returncode == 0, output(fixed)[-4000:]
    base = fake_repos.base_url
    assert f"{base}/amd/rocm/apt/6.1.2 bookworm main" in (root / "etc/apt/sources.list.d/rocm.list").read_text()
    key = (root / "etc/apt/keyrings/rocm.asc").read_bytes()
    assert hashlib.sha256(key).hexdigest() == fake_repos.key_sha256["amd"]
    assert installed(root, "amdgpu-dkms") == "1:6.7.0.60102-1" and installed(root, "rocminfo") == "1.0.0.60102-1"

    again = run_pyinfra(node(tmp_path, root, good, "good.yaml"))
    assert again.returncode == 0 and grand_total(output(again)).changed == 0, output(again)[-4000:]


def fake_pci_gpu(root: Path, address: str, pci_class: str, vendor: str, device: str) -> None:
    """A GPU as sysfs shows it, under the root's own /sys: a chroot has no sysfs mounted, so the fact reads these."""
    folder = root / "sys/bus/pci/devices" / address
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in (("class", pci_class), ("vendor", vendor), ("device", device)):
        (folder / name).write_text(value + "\n")


def test_amd_gpus_under_the_nvidia_group_are_refused_before_any_change(fake_repos, tmp_path):
    root = prepare_root(tmp_path / "root", fake_repos)
    fake_pci_gpu(root, "0000:29:00.0", "0x038000", "0x1002", "0x740c")  # an MI250X GCD
    fake_pci_gpu(root, "0000:00:18.0", "0x060000", "0x1022", "0x14a4")  # AMD's CPU bridge: not a GPU
    hosts = write_hosts_file(
        tmp_path / "hosts.yaml", {"nvidia": [{"name": f"@chroot/{root}", "data": nvidia_host_data(fake_repos)}]}
    )

    run = run_pyinfra(hosts, timeout=120)

    text = " ".join(output(run).split())
    assert run.returncode != 0
    assert (
        f"host @chroot/{root}: is in group nvidia (NVIDIA GPUs) but its PCI bus (/sys/bus/pci/devices) shows "
        "AMD 1002:740c at 0000:29:00.0 and no NVIDIA GPU; nothing was installed. move it under mi250 or mi300x"
    ) in text, text[-3000:]
    assert "--> Starting operation" not in text
    assert apt_files(root) == ["etc/apt/sources.list.d/distro.list"]
    assert not installed(root, "cuda-drivers-550")

    # The same GPUs under an AMD group pass the check (the plan only: nothing changes).
    hosts = write_hosts_file(
        tmp_path / "amd.yaml", {"mi250": [{"name": f"@chroot/{root}", "data": amd_host_data(fake_repos)}]}
    )
    dry = run_pyinfra(hosts, "--dry", timeout=120)
    assert dry.returncode == 0, output(dry)[-3000:]
    assert "MI250 system tuning" in output(dry)
