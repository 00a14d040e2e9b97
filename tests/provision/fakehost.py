"""Run one of our deploys against pyinfra's @fake connector and record what it would do to a real host.

@fake executes nothing: every command "succeeds" with the canned output given for it (matched by substring), so
facts can describe any host (a fresh Ubuntu 22.04 node, a node with the driver in place, one with 8 MI300X GPUs).
This is how the pieces that cannot run in a chroot (reboots, grub, sysctl -w, systemd) are tested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from pyinfra.connectors.fake import FakeConnector

from provision import settings as node_settings
from provision.facts import settings_facts

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP_DATA = REPO_ROOT / "provision" / "group_data"
HOST = "@fake/node-01"
KERNEL = "6.8.0-45-generic"

UBUNTU_2204 = {
    "curl --head": "ok",  # every repository and key URL answers the check made before any change
    "uname -s": "Linux",
    "uname -r": KERNEL,
    "for file in $(ls -pdL *-release": [
        "/etc/os-release",
        'NAME="Ubuntu"',
        'VERSION_ID="22.04"',
        "ID=ubuntu",
        "VERSION_CODENAME=jammy",
        "---",
    ],
    "/proc/cpuinfo": "vendor_id\t: AuthenticAMD",
}


def group_data(group: str) -> dict[str, Any]:
    """all.py overlaid with <group>.py, as pyinfra merges them."""
    data: dict[str, Any] = {}
    for name in ("all", group):
        namespace: dict[str, Any] = {}
        exec(compile((GROUP_DATA / f"{name}.py").read_text(), str(GROUP_DATA / f"{name}.py"), "exec"), namespace)  # noqa: S102
        data.update({key: value for key, value in namespace.items() if not key.startswith("__")})
    return data


@dataclass
class FakeRun:
    commands: list[str]
    uploads: dict[str, str]  # remote path -> content
    state: State
    settings: node_settings.NodeSettings
    results: list[Any] = field(default_factory=list)

    def ran(self, fragment: str) -> bool:
        return any(fragment in command for command in self.commands)

    @property
    def failed(self) -> bool:
        return bool(self.state.failed_hosts)


def run_deploy(
    group: str,
    deploy: Callable[..., Any],
    *,
    data: dict[str, Any] | None = None,
    responses: dict[Any, Any] | None = None,
    args: Callable[[node_settings.NodeSettings], tuple] = lambda settings: (settings,),
) -> FakeRun:
    """Plan and execute `deploy(*args(settings))` on one fake host of `group`; returns what it ran and uploaded."""
    host_data = group_data(group)
    host_data.update(data or {})
    host_data.update(
        # The test's responses win: they come first (matched first) and replace a default of the same key.
        fake_responses={**(responses or {}), **{k: v for k, v in UBUNTU_2204.items() if k not in (responses or {})}},
        fake_delay=0,
        fake_delay_jitter=0,
    )
    inventory = Inventory(([HOST], host_data), **{group: ([HOST], {})})
    state = State(inventory, Config())
    uploads: dict[str, str] = {}

    def record_upload(self, filename_or_io, remote_filename, *args, **kwargs):
        content = filename_or_io.read() if hasattr(filename_or_io, "read") else Path(filename_or_io).read_text()
        uploads[remote_filename] = content.decode() if isinstance(content, bytes) else content
        return True

    # server.reboot sleeps `delay` seconds before reconnecting; a fake host comes back at once.
    with (
        mock.patch.object(FakeConnector, "put_file", record_upload),
        mock.patch("pyinfra.operations.server.sleep", lambda seconds: None),
    ):
        connect_all(state)
        host = inventory.get_host(HOST)
        settings = node_settings.resolve(host.name, host.groups, host.data, settings_facts(host))
        results = add_deploy(state, deploy, *args(settings))
        run_ops(state)
    return FakeRun(list(host.connector.executed_commands), uploads, state, settings, results or [])
