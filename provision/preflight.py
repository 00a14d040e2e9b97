"""Checks against the live host that must pass before anything changes (they only read)."""

from __future__ import annotations

from pyinfra.api import Host
from pyinfra.facts.server import Users

from provision.facts import UrlStatus
from provision.settings import NodeSettings, ProvisionDataError


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
