"""Checks against the live host that must pass before anything changes (they only read)."""

from __future__ import annotations

from pyinfra.api import Host
from pyinfra.facts.server import Users

from provision.facts import PciGpus, Privilege, UrlStatus
from provision.pins import PLATFORM_BY_GROUP
from provision.settings import NodeSettings, ProvisionDataError

# The GPU maker each platform's driver is for, as PciGpus names it.
GPU_VENDOR_BY_PLATFORM = {"rocm": "AMD", "cuda": "NVIDIA"}


def check_privilege(host: Host) -> None:
    """Every change needs root. Without it the run would plan normally, fail at the first write and leave
    pyinfra's upload folder (/tmp/pyinfra-<hash>) behind on the host, so refuse before any change."""
    found = host.get_fact(Privilege)
    if found["uid"] == 0:
        return
    user = found["user"] or "the connecting user"
    if found["uid"] is None:
        problem = (
            "could not tell which user the run executes as (`id -u` gave nothing; with --sudo, sudo itself "
            "failed: its message is above)"
        )
        fix = "check that the user may use sudo (add --use-sudo-password if sudo asks for one), or connect as root"
    else:
        problem = f"the run executes as {user} (uid {found['uid']}), not root, and without --sudo"
        fix = {
            "ok": f"rerun with --sudo (make provision PROVISION_ARGS=--sudo): sudo -n works for {user}",
            "refused": (
                f"sudo -n true fails for {user} (no sudo rights, or sudo wants a password): give {user} sudo "
                "rights and rerun with --sudo (plus --use-sudo-password if it asks for one), or connect as root "
                "(ssh_user: root)"
            ),
        }.get(found["sudo"], f"sudo is not installed on the host: install it and give {user} sudo rights, then "
                             "rerun with --sudo, or connect as root (ssh_user: root)")  # fmt: skip
    raise ProvisionDataError(f"host {host.name}: {problem}; nothing was changed. To fix: {fix}")


def check_gpu_vendor(host: Host, settings: NodeSettings) -> None:
    """The GPUs on the PCI bus must be the group's vendor's, before any driver is installed: an AMD host listed
    under nvidia would otherwise get NVIDIA's driver and toolkit. A host whose bus shows no GPU (a chroot, a
    container) passes here; the GPU check after the driver install still fails it."""
    gpus = host.get_fact(PciGpus)
    expected = GPU_VENDOR_BY_PLATFORM[settings.platform]
    if not gpus or any(gpu["vendor"] == expected for gpu in gpus):
        return
    found = ", ".join(f"{gpu['vendor']} {gpu['ids']} at {gpu['address']}" for gpu in gpus)
    vendors = {gpu["vendor"] for gpu in gpus}
    groups = [group for group, platform in PLATFORM_BY_GROUP.items() if GPU_VENDOR_BY_PLATFORM[platform] in vendors]
    move = f"move it under {' or '.join(groups)} in the hosts file" if groups else "check the host in the hosts file"
    raise ProvisionDataError(
        f"host {host.name}: is in group {settings.group} ({expected} GPUs) but its PCI bus "
        f"(/sys/bus/pci/devices) shows {found} and no {expected} GPU; nothing was installed. {move}"
    )


def check_users_exist(host: Host, settings: NodeSettings) -> None:
    """gpu_users are existing accounts to give GPU and Docker access; this kit never creates accounts."""
    existing = host.get_fact(Users)
    missing = [user for user in settings.gpu_users if user not in existing]
    if missing:
        raise ProvisionDataError(
            f"host {host.name}: gpu_users lists {', '.join(missing)}, which do not exist on the host; "
            "create the accounts first or remove them from gpu_users in provision/group_data/all.py (or host data)"
        )


def urls_to_check(settings: NodeSettings) -> list[tuple[str, str]]:
    """(data key, URL) for every key and repository the node will fetch; a repository by its Release file."""
    urls: dict[str, str] = {}
    for repo in settings.apt_repos:
        urls.setdefault(repo.key_url, repo.key_url_key)
        urls.setdefault(repo.release_url(settings.apt_arch), repo.url_key)
    return [(key, url) for url, key in urls.items()]


def check_urls_reachable(host: Host, settings: NodeSettings) -> None:
    """A HEAD request from the node itself to each URL: a mirror that is down or a mistyped path is named here,
    with the data key to fix, instead of surfacing half-way through as `curl: (7)` or `Unable to locate package`."""
    problems = []
    for key, url in urls_to_check(settings):
        status = host.get_fact(UrlStatus, url=url, timeout=settings.url_check_timeout)
        if status != "ok":
            problems.append(f"{key}: {url} ({status})")
    if problems:
        raise ProvisionDataError(
            f"host {host.name}: cannot reach from the host, before any change: {'; '.join(problems)}. "
            "Fix the URL in provision/group_data/ (or this host's data), or the host's network/proxy"
        )
