"""Vendor apt repositories the modern way (a key under /etc/apt/keyrings, a signed-by source line, an optional pin),
all written before apt's lists are refreshed, so a source fixed in the data is fixed before apt reads it."""

from __future__ import annotations

from collections.abc import Iterable
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from provision.facts import UrlSha256
from provision.operations import apt_lists_current
from provision.settings import AptRepo

# apt reads its configuration as the user who runs it: sources, keys and pins are world-readable, like every
# file under /etc/apt. A 0600 pin is skipped by `apt-cache policy` run by a user, who then sees Debian's
# higher-versioned rocminfo as the candidate.
APT_FILE_MODE = "644"


def pin_text(repo: AptRepo) -> str:
    return (
        "# Written by provision/ (clinical-finetune-kit)\n"
        f"Package: *\nPin: {repo.pin}\nPin-Priority: {repo.pin_priority}\n"
    )


def _key_sha256(repo: AptRepo) -> str | None:
    # Without a pinned checksum the key on the node follows what the key URL serves now, so a key URL fixed in
    # the data (or a key the vendor rotated) replaces the old file instead of leaving apt with the wrong key.
    return repo.key_sha256 or host.get_fact(UrlSha256, url=repo.key_url)


def pin_path(stem: str) -> str:
    return f"/etc/apt/preferences.d/{stem}.pref"


def pin_files(repos: Iterable[AptRepo]) -> dict[str, AptRepo]:
    """pin file -> the repository whose pin it holds. Repositories signed by one key with the same pin (AMD's
    amdgpu and rocm) share one file named after the key; apt applies a `Package: *` pin to every source it
    matches, so a second identical file would only be a copy to keep in step."""
    pins: dict[str, AptRepo] = {}
    for repo in repos:
        if not repo.pin:
            continue
        path = pin_path(repo.keyring)
        if path in pins and pin_text(pins[path]) != pin_text(repo):
            path = pin_path(repo.name)  # same key, another pin: it needs a file of its own
        pins.setdefault(path, repo)
    return pins


@deploy("Vendor apt repository")
def vendor_apt_repo(repo: AptRepo, arch: str) -> list[OperationMeta]:
    """Install the repository's key and source; returns the operations so apt can be refreshed on change."""
    return [
        files.directory(name="/etc/apt/keyrings exists", path="/etc/apt/keyrings", mode="755"),
        files.download(
            name=f"Signing key for {repo.name} ({repo.key_url})",
            src=repo.key_url,
            dest=repo.keyring_path,
            sha256sum=_key_sha256(repo),
            mode=APT_FILE_MODE,
        ),
        files.put(
            name=f"apt source {repo.name}: {repo.url} {repo.suite}",
            src=StringIO(repo.source_line(arch) + "\n"),
            dest=f"/etc/apt/sources.list.d/{repo.name}.list",
            mode=APT_FILE_MODE,
        ),
    ]


def apt_pins(repos: list[AptRepo]) -> list[OperationMeta]:
    """One file per distinct pin; any other pin file named after one of these repositories (an earlier run's, or a
    pin since removed from the data) is deleted."""
    pins = pin_files(repos)
    changes = []
    # Without the pin apt may prefer the distribution's own builds: Debian/Ubuntu ship rocminfo, hipcc and
    # NVIDIA driver packages with higher version numbers than the vendor's.
    for path, repo in host.loop(list(pins.items())):
        changes.append(files.put(name=f"apt pin {repo.pin} ({repo.pin_priority}) in {path}",
                                 src=StringIO(pin_text(repo)), dest=path, mode=APT_FILE_MODE))  # fmt: skip
    stale = sorted({pin_path(stem) for repo in repos for stem in (repo.name, repo.keyring)} - set(pins))
    for path in host.loop(stale):
        changes.append(files.file(name=f"No apt pin {path}", path=path, present=False))
    return changes


@deploy("Vendor apt repositories and package lists")
def apt_sources(repos: Iterable[AptRepo], arch: str, cache_time: int) -> None:
    """Every vendor source first, then one refresh: an update never runs against a source this run will rewrite."""
    repos = list(repos)
    changes: list[OperationMeta] = []
    # host.loop: hosts of different vendors run this loop over different repositories; pyinfra needs the loop
    # position to keep the operation order consistent across them.
    for repo in host.loop(repos):
        changes.extend(vendor_apt_repo(repo, arch))
    changes.extend(apt_pins(repos))
    apt_lists_current(name="apt package lists are current (every source)", sources=changes, cache_time=cache_time)
