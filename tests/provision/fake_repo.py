"""Signed stand-ins for the vendor apt repositories, served on 127.0.0.1, carrying dummy packages of the real names.

The real repositories (repo.radeon.com, NVIDIA's, Docker's) cannot be reached from the test machines. These
fakes have the same layout under a base URL (suite/component repositories for AMD and Docker, flat ones for
NVIDIA), the same Release Origin/Label fields the apt pins match, and one throw-away signing key per vendor, so a
source wired to the wrong key fails as it would for real. A "distro" repository stands in for the Ubuntu archive:
it carries the kernel packages and a rocminfo with a higher version than AMD's, like Debian's and Ubuntu's do.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROCM_VERSION = "6.1.2"
NVIDIA_BRANCH = "550"
SUITE = "bookworm"

# The fake nvidia-ctk does what the real one does to daemon.json, and logs each call so a test can count them.
FAKE_NVIDIA_CTK = """#!/bin/sh
echo "$*" >> /var/log/fake-nvidia-ctk.log
mkdir -p /etc/docker
printf '{"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}\\n' > /etc/docker/daemon.json
"""


@dataclass
class Package:
    name: str
    version: str
    depends: str = ""
    files: dict[str, str] = field(default_factory=dict)  # path in the package -> content (made executable)


@dataclass
class RepoSpec:
    path: str  # under the served root
    flat: bool
    vendor: str  # which signing key; None-like "" means unsigned (the distro stand-in)
    origin: str
    label: str
    packages: list[Package]
    component: str = "main"


@dataclass
class FakeRepos:
    root: Path
    base_url: str = ""
    key_sha256: dict[str, str] = field(default_factory=dict)
    server: subprocess.Popen | None = None


def repo_specs(kernel: str) -> list[RepoSpec]:
    rocm_tag = ROCM_VERSION.replace(".", "0")  # 6.1.2 -> 60102, as in AMD's package versions
    return [
        RepoSpec(
            f"amd/amdgpu/{ROCM_VERSION}/ubuntu",
            False,
            "amd",
            "repo.radeon.com",
            "repo.radeon.com",
            [
                Package("amdgpu-dkms", f"1:6.7.0.{rocm_tag}-1", "amdgpu-dkms-firmware"),
                Package("amdgpu-dkms-firmware", f"1:6.7.0.{rocm_tag}-1"),
            ],
        ),
        RepoSpec(
            f"amd/rocm/apt/{ROCM_VERSION}",
            False,
            "amd",
            "repo.radeon.com",
            "repo.radeon.com",
            [
                Package("rocm-hip-runtime", f"{ROCM_VERSION}.{rocm_tag}-1", "rocminfo (>= 1.0.0)"),
                Package("rocminfo", f"1.0.0.{rocm_tag}-1"),
                Package("rocm-smi-lib", f"7.2.0.{rocm_tag}-1"),
                Package("rocm", f"{ROCM_VERSION}.{rocm_tag}-1", "rocm-hip-runtime"),
            ],
        ),
        RepoSpec(
            "docker/linux/ubuntu",
            False,
            "docker",
            "Docker",
            "Docker CE",
            [
                Package(name, "5:27.3.1-1~debian.12~bookworm")
                for name in ("docker-ce", "docker-ce-cli", "docker-buildx-plugin", "docker-compose-plugin")
            ]
            + [Package("containerd.io", "1.7.22-1")],
            component="stable",
        ),
        RepoSpec(
            "cuda/ubuntu2204/x86_64",
            True,
            "cuda",
            "NVIDIA",
            "NVIDIA CUDA",
            [
                Package(f"cuda-drivers-{NVIDIA_BRANCH}", "550.127.08-1"),
                Package(f"nvidia-fabricmanager-{NVIDIA_BRANCH}", "550.127.08-1"),
                Package("cuda-drivers-560", "560.35.03-1"),
            ],
        ),
        RepoSpec(
            "nvct/stable/deb/amd64",
            True,
            "nvct",
            "github.com/NVIDIA/libnvidia-container",
            "libnvidia-container",
            [Package("nvidia-container-toolkit", "1.16.2-1", files={"usr/bin/nvidia-ctk": FAKE_NVIDIA_CTK})],
        ),
        RepoSpec(
            "distro",
            False,
            "",
            "Debian",
            "Debian",
            [
                Package("rocminfo", "5.2.3-3"),
                Package(f"linux-headers-{kernel}", "1.0-1"),
                Package(f"linux-modules-extra-{kernel}", "1.0-1"),
                Package("linux-tools-common", "1.0-1"),
                Package(f"linux-tools-{kernel}", "1.0-1"),
            ],
        ),
    ]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def _build_deb(package: Package, out_dir: Path, work: Path) -> None:
    pkg_dir = work / f"{package.name}-build"
    (pkg_dir / "DEBIAN").mkdir(parents=True)
    depends = f"Depends: {package.depends}\n" if package.depends else ""
    (pkg_dir / "DEBIAN/control").write_text(
        f"Package: {package.name}\nVersion: {package.version}\nArchitecture: all\n"
        f"Maintainer: clinical-finetune-kit tests <tests@example.invalid>\n{depends}"
        f"Description: dummy stand-in for {package.name} (provisioning tests only)\n"
    )
    for path, content in package.files.items():
        target = pkg_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(0o755)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe_version = package.version.split(":")[-1]  # Debian file names leave out the epoch
    _run(
        [
            "dpkg-deb",
            "--root-owner-group",
            "-Zgzip",
            "-z1",
            "--build",
            str(pkg_dir),
            str(out_dir / f"{package.name}_{safe_version}_all.deb"),
        ]
    )
    shutil.rmtree(pkg_dir)


def _release(directory: Path, spec: RepoSpec, suite: str) -> None:
    options = [
        f"-oAPT::FTPArchive::Release::Origin={spec.origin}",
        f"-oAPT::FTPArchive::Release::Label={spec.label}",
        "-oAPT::FTPArchive::Release::Architectures=amd64 all",
    ]
    if not spec.flat:
        options += [
            f"-oAPT::FTPArchive::Release::Suite={suite}",
            f"-oAPT::FTPArchive::Release::Codename={suite}",
            f"-oAPT::FTPArchive::Release::Components={spec.component}",
        ]
    text = _run(["apt-ftparchive", *options, "release", "."], cwd=directory).stdout
    (directory / "Release").write_text(text)


def _sign(directory: Path, gnupg_home: Path, vendor: str) -> None:
    base = ["gpg", "--batch", "--yes", "--homedir", str(gnupg_home), "--local-user", f"fake-{vendor}@example.invalid"]
    _run([*base, "--clearsign", "-o", str(directory / "InRelease"), str(directory / "Release")])
    _run([*base, "--armor", "--detach-sign", "-o", str(directory / "Release.gpg"), str(directory / "Release")])


def _build_repo(root: Path, spec: RepoSpec, suite: str, gnupg_home: Path, work: Path) -> None:
    repo = root / spec.path
    if spec.flat:
        for package in spec.packages:
            _build_deb(package, repo, work)
        (repo / "Packages").write_text(_run(["apt-ftparchive", "packages", "."], cwd=repo).stdout)
        release_dir = repo
    else:
        for package in spec.packages:
            _build_deb(package, repo / "pool" / spec.component, work)
        binary = repo / "dists" / suite / spec.component / "binary-amd64"
        binary.mkdir(parents=True)
        packages = _run(["apt-ftparchive", "packages", f"pool/{spec.component}"], cwd=repo).stdout
        (binary / "Packages").write_text(packages)
        release_dir = repo / "dists" / suite
    _release(release_dir, spec, suite)
    if spec.vendor:
        _sign(release_dir, gnupg_home, spec.vendor)


def _make_keys(gnupg_home: Path, vendors: list[str]) -> None:
    gnupg_home.mkdir(mode=0o700)
    for vendor in vendors:
        _run(
            [
                "gpg",
                "--batch",
                "--homedir",
                str(gnupg_home),
                "--passphrase",
                "",
                "--quick-gen-key",
                f"Fake {vendor} repository <fake-{vendor}@example.invalid>",
                "ed25519",
                "sign",
                "never",
            ]
        )


def _export_key(gnupg_home: Path, vendor: str, dest: Path) -> str:
    armored = _run(
        ["gpg", "--batch", "--homedir", str(gnupg_home), "--armor", "--export", f"fake-{vendor}@example.invalid"]
    ).stdout
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(armored)
    return hashlib.sha256(armored.encode()).hexdigest()


# Where each vendor publishes its key, relative to the served root (mirrors the real URLs' shape).
KEY_PATHS = {
    "amd": "amd/rocm/rocm.gpg.key",
    "docker": "docker/linux/ubuntu/gpg",
    "cuda": "cuda/ubuntu2204/x86_64/3bf863cc.pub",
    "nvct": "nvct/gpgkey",
}


def build(root: Path, kernel: str, suite: str = SUITE) -> FakeRepos:
    """Build every fake repository under root; returns the key checksums (not yet served)."""
    repos = FakeRepos(root=root)
    # gpg-agent's socket path must stay short, so its home lives directly under /tmp.
    gnupg_home = Path(tempfile.mkdtemp(prefix="fakegpg-")) / "g"
    try:
        _make_keys(gnupg_home, list(KEY_PATHS))
        with tempfile.TemporaryDirectory(prefix="fakedeb-") as work:
            for spec in repo_specs(kernel):
                _build_repo(root, spec, suite, gnupg_home, Path(work))
        for vendor, path in KEY_PATHS.items():
            repos.key_sha256[vendor] = _export_key(gnupg_home, vendor, root / path)
    finally:
        # gpg started an agent for this home; gpgconf stops exactly that one.
        subprocess.run(["gpgconf", "--homedir", str(gnupg_home), "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(gnupg_home.parent, ignore_errors=True)
    return repos


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(repos: FakeRepos, log_path: Path) -> FakeRepos:
    """Serve the root on 127.0.0.1 with Python's http.server; stop it with stop(repos)."""
    port = _free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(repos.root)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    repos.server = process
    repos.base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"{repos.base_url}/{KEY_PATHS['amd']}", timeout=2):
                return repos
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop(repos)
                raise RuntimeError(f"fake repository server did not start; see {log_path}") from None
            time.sleep(0.2)


def stop(repos: FakeRepos) -> None:
    """Stop the server this module started (SIGTERM to its own PID) and reap it."""
    if repos.server is not None:
        repos.server.terminate()
        repos.server.wait(timeout=10)
        repos.server = None
