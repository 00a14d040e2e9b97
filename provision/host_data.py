"""Read one host's inventory data: typed getters whose errors name the host, the key and where to set it.

group_data/all.py defines every key the kit reads, with its default; anything else in a host's data is either
pyinfra's own (connector settings such as ssh_user, global arguments such as _sudo) or a mistake.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from provision.data_errors import GROUP_DATA, GROUP_DATA_DIR, ProvisionDataError
from provision.group_data_sources import defining_file

URL_SCHEMES = ("https://", "http://", "file:/")
# Keys earlier versions of the kit read, with what replaced them (a plain "unknown" would not say).
RETIRED_KEYS = {
    "tune_kernel_args": "was replaced by tune_iommu_passthrough (its arguments follow the CPU vendor) and "
    "tune_pci_realloc_off",
}


@lru_cache(maxsize=1)
def kit_keys() -> frozenset[str]:
    """Every key group_data/all.py defines: the settings this kit reads."""
    namespace: dict[str, Any] = {}
    source = GROUP_DATA / "all.py"
    exec(compile(source.read_text(), str(source), "exec"), namespace)  # noqa: S102 - our own file, loaded as pyinfra does
    return frozenset(key for key in namespace if not key.startswith("__"))


# Host data keys pyinfra's connectors read outside their `data_meta` tables: the chroot and dockerssh connectors set
# these in make_names_data() and read them back as host.data.<key>. tests/provision checks each is still in the
# installed connector's source, so a pyinfra upgrade that drops or renames one fails a test instead of passing typos.
CONNECTOR_KEYS_OUTSIDE_META: dict[str, tuple[str, ...]] = {
    "chroot": ("chroot_directory",),
    "dockerssh": ("docker_image",),
}


@lru_cache(maxsize=1)
def connector_keys() -> frozenset[str]:
    """The exact host data keys pyinfra's installed connectors read (ssh_user, docker_identifier, fake_responses...).

    Exact names, not prefixes: the kit's own Docker settings share the docker_ prefix, and a typo in one of them
    (docker_key_sha265) must not pass as pyinfra's."""
    from pyinfra.api.connectors import get_all_connectors

    keys: set[str] = set()
    for name, connector in get_all_connectors().items():
        keys.update(getattr(connector, "data_meta", None) or {})
        keys.update(CONNECTOR_KEYS_OUTSIDE_META.get(name, ()))
    return frozenset(keys)


def unknown_keys(keys: set[str]) -> list[str]:
    """Keys that are neither ours nor pyinfra's. Names starting with "_" are pyinfra's global arguments (_sudo)."""
    known = kit_keys() | connector_keys()
    return sorted(key for key in keys if not key.startswith("_") and key not in known)


def nearest_key(key: str) -> str | None:
    matches = difflib.get_close_matches(key, sorted(kit_keys()), n=1, cutoff=0.6)
    return matches[0] if matches else None


def data_keys(data: Any) -> set[str]:
    """All keys a pyinfra HostData holds, over its layers (--data overrides, host, groups, all), or a dict's."""
    if isinstance(data, dict):
        return set(data)
    keys: set[str] = set()
    for layer in getattr(data, "datas", ()):
        layer = layer() if callable(layer) else layer
        keys.update(layer)
    return keys


class HostDataReader:
    """Reads keys from one host's data; every problem becomes a ProvisionDataError that says where to fix it.

    `extra_group_data`: the --group-data paths of the run, so a key set in one of them is named by its file."""

    def __init__(self, host_name: str, group: str, data: Any, extra_group_data: Sequence[Path] = ()):
        self.host_name = host_name
        self.group = group
        self._data = data
        self._extra_group_data = tuple(extra_group_data)

    def where(self, key: str | None = None) -> str:
        """Where to set or fix `key`: the --group-data file it came from, else the kit's group data files."""
        if key is not None and self._extra_group_data and key not in self._host_keys():
            file = defining_file(key, self.group, self._extra_group_data)
            if file is not None and file.parent.resolve() != GROUP_DATA:
                return f"{file} (from --group-data)"
        return f"{GROUP_DATA_DIR}/{self.group}.py or {GROUP_DATA_DIR}/all.py (or this host's data)"

    def _host_keys(self) -> set[str]:
        """Keys set for this host itself (the hosts file's data:), which win over any group data file."""
        host = getattr(self._data, "__dict__", {}).get("host")
        return set(host.inventory.get_host_data(host.name)) if host is not None else set()

    def error(self, key: str, problem: str) -> ProvisionDataError:
        return ProvisionDataError(f"host {self.host_name}: {key} {problem}; set it in {self.where(key)}")

    def reject_unknown_keys(self) -> None:
        for key in unknown_keys(data_keys(self._data)):
            if key in RETIRED_KEYS:
                raise ProvisionDataError(f"host {self.host_name}: {key} {RETIRED_KEYS[key]}; see {self.where(key)}")
            nearest = nearest_key(key)
            hint = f"did you mean {nearest}?" if nearest else f"the known keys are in {GROUP_DATA_DIR}/all.py"
            raise ProvisionDataError(
                f"host {self.host_name}: unknown setting {key!r} ({hint}); fix or remove it in {self.where(key)}"
            )

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def required(self, key: str) -> Any:
        value = self._data.get(key)
        if value is None or value == "" or value == []:
            raise self.error(key, "is not set")
        return value

    def text(self, key: str, pattern: str | None = None, form: str = "") -> str:
        value = self.required(key)
        if not isinstance(value, str) or (pattern and not re.fullmatch(pattern, value)):
            raise self.error(key, f"must be {form or 'a string'} (got {value!r})")
        return value

    def url(self, key: str) -> str:
        value = self.required(key)
        if not isinstance(value, str) or not value.startswith(URL_SCHEMES) or re.search(r"\s", value):
            raise self.error(key, f"must be a URL starting with {', '.join(URL_SCHEMES)} (got {value!r})")
        return value.rstrip("/") if not value.endswith("$(ARCH)") else value

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._data.get(key)
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
            raise self.error(key, f"must be a list of non-empty strings (got {value!r})")
        return tuple(value)

    def flag(self, key: str) -> bool:
        value = self._data.get(key)
        if not isinstance(value, bool):
            raise self.error(key, f"must be True or False (got {value!r})")
        return value

    def count(self, key: str, *, optional: bool = False) -> int | None:
        value = self._data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            allowed = " or None" if optional else ""
            raise self.error(key, f"must be a non-negative whole number{allowed} (got {value!r})")
        return value

    def sha256_or_none(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
            raise self.error(key, f"must be a lowercase 64-character sha256 hex digest or None (got {value!r})")
        return value
