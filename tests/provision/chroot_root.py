"""A Debian bookworm root for the chroot tests, built once with debootstrap and cached as a tarball.

The real targets are Ubuntu 22.04 hosts; bookworm is what this machine can debootstrap from its allowed
package registry. The deploys take the OS codename from host data, so the tests set it to bookworm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("PROVISION_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the deploys expect on any host before they start: TLS roots and curl for downloading vendor keys
# (pyinfra's files.download runs curl on the target). Ubuntu server images ship all of these.
INCLUDE = ["ca-certificates", "curl", "gnupg"]
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "provision"


def cache_dir() -> Path:
    return Path(os.environ.get("PROVISION_TEST_CACHE", DEFAULT_CACHE))


def tarball_path() -> Path:
    return cache_dir() / f"{SUITE}-minbase.tar"


def ensure_tarball() -> Path:
    """Return the cached root tarball, building it with debootstrap on first use (1-3 minutes)."""
    tarball = tarball_path()
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="debootstrap-") as work:
        root = Path(work) / "root"
        subprocess.run(
            ["nice", "debootstrap", "--variant=minbase", "--include=" + ",".join(INCLUDE), SUITE, str(root), MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # Leave no apt lists or downloaded .debs in the cache: the tests point apt at loopback repos only.
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)  # atomic: a killed run never leaves a half-written cache behind
    return tarball


def extract_root(dest: Path) -> Path:
    """Unpack a fresh copy of the cached root into dest (a few seconds)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(ensure_tarball())], check=True)
    return dest


if __name__ == "__main__":
    print(ensure_tarball())
