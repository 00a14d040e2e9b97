"""Read the inventory's hosts file and reject what pyinfra would otherwise silently ignore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from provision.pins import PLATFORM_BY_GROUP
from provision.settings import ProvisionDataError

HostEntry = str | tuple[str, dict[str, Any]]


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        # PyYAML's own message names "<unicode string>"; name the file and the line (1-based) instead.
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and start is not None and start is not mark:
            context += f" that starts at line {start.line + 1}"
        detail = f"{problem} ({context})" if context else problem
        raise ProvisionDataError(f"{where}: not valid YAML: {detail}; fix the hosts file at that line") from None


def read_hosts_file(path: Path) -> dict[str, list[HostEntry]]:
    """Groups (mi250, mi300x, nvidia) -> pyinfra host entries. Unknown groups, malformed entries and a file
    without any host are errors."""
    if not path.is_file():
        raise ProvisionDataError(
            f"{path}: no hosts file; copy provision/hosts.example.yaml to provision/hosts.yaml and list your "
            "nodes under mi250, mi300x or nvidia (or set PROVISION_HOSTS to another file)"
        )
    raw = _load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ProvisionDataError(f"{path}: expected a mapping of group name -> list of hosts")
    unknown = sorted(set(raw) - PLATFORM_BY_GROUP.keys())
    if unknown:
        raise ProvisionDataError(
            f"{path}: unknown group(s) {', '.join(map(str, unknown))}; use {', '.join(PLATFORM_BY_GROUP)} "
            "(or add a group to PLATFORM_BY_GROUP in provision/pins.py with a group_data file)"
        )

    groups: dict[str, list[HostEntry]] = {name: [] for name in PLATFORM_BY_GROUP}
    seen: dict[str, str] = {}
    for group, entries in raw.items():
        for index, entry in enumerate(entries or []):
            where = f"{path}: {group}[{index}]"
            if isinstance(entry, str):
                name, data = entry, None
            elif isinstance(entry, dict) and isinstance(entry.get("name"), str) and set(entry) <= {"name", "data"}:
                name, data = entry["name"], entry.get("data") or {}
                if not isinstance(data, dict):
                    raise ProvisionDataError(f"{where}: data must be a mapping of key -> value")
            else:
                raise ProvisionDataError(f"{where}: expected a host name or {{name: ..., data: {{...}}}}")
            if name in seen:
                raise ProvisionDataError(f"{where}: {name} is already listed under {seen[name]}")
            seen[name] = group
            groups[group].append(name if data is None else (name, data))
    if not seen:
        # pyinfra itself would plan nothing and exit 0, which reads as success.
        raise ProvisionDataError(
            f"{path}: no hosts: every group ({', '.join(PLATFORM_BY_GROUP)}) is empty; list at least one node "
            "(see provision/hosts.example.yaml)"
        )
    return groups
