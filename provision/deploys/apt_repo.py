"""A vendor apt repository the modern way: a key under /etc/apt/keyrings, a signed-by source line, an optional pin."""

from __future__ import annotations

from collections.abc import Iterable
from io import StringIO

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files
from pyinfra.operations.util import any_changed

from provision.settings import AptRepo


def pin_text(repo: AptRepo) -> str:
    return (
        "# Written by provision/ (clinical-finetune-kit)\n"
        f"Package: *\nPin: {repo.pin}\nPin-Priority: {repo.pin_priority}\n"
    )


@deploy("Vendor apt repository")
def vendor_apt_repo(repo: AptRepo, arch: str) -> list[OperationMeta]:
    """Install the repository's key, source and pin; returns the operations so callers can refresh apt on change."""
    changes = [
        files.directory(name="/etc/apt/keyrings exists", path="/etc/apt/keyrings", mode="755"),
        files.download(
            name=f"Signing key for {repo.name} ({repo.key_url})",
            src=repo.key_url,
            dest=repo.keyring_path,
            sha256sum=repo.key_sha256,
            mode="644",
        ),
        files.put(
            name=f"apt source {repo.name}: {repo.url} {repo.suite}",
            src=StringIO(repo.source_line(arch) + "\n"),
            dest=f"/etc/apt/sources.list.d/{repo.name}.list",
            mode="644",
        ),
    ]
    pin_path = f"/etc/apt/preferences.d/{repo.name}.pref"
    if repo.pin:
        # Without the pin apt may prefer the distribution's own builds: Debian/Ubuntu ship rocminfo, hipcc and
        # NVIDIA driver packages with higher version numbers than the vendor's.
        changes.append(
            files.put(name=f"apt pin {repo.name} ({repo.pin_priority})", src=StringIO(pin_text(repo)), dest=pin_path)
        )
    else:
        changes.append(files.file(name=f"No apt pin for {repo.name}", path=pin_path, present=False))
    return changes


def vendor_apt_repos(repos: Iterable[AptRepo], arch: str, *, what: str) -> None:
    """Install each repository, then refresh apt's lists only if one of them changed (so a second run is clean)."""
    changes: list[OperationMeta] = []
    for repo in repos:
        changes.extend(vendor_apt_repo(repo, arch))
    apt.update(name=f"apt lists include {what}", _if=any_changed(*changes))
