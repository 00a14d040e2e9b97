"""Checks against the live host that must pass before anything changes."""

from __future__ import annotations

from pyinfra.api import Host
from pyinfra.facts.server import Users

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
