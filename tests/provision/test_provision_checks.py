"""Unit tests of the checks made before any change: pyinfra's exact connector keys, the PCI and privilege facts,
the --group-data parsing, and what git must never pick up from a provisioning run."""

from __future__ import annotations

import inspect
import subprocess
from pathlib import Path

import pytest
from pyinfra.api.connectors import get_all_connectors

from provision.facts import PciGpus, Privilege
from provision.group_data_sources import cli_group_data_paths, defining_file
from provision.host_data import CONNECTOR_KEYS_OUTSIDE_META, connector_keys, kit_keys, unknown_keys

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_pyinfras_connector_keys_are_known_exactly_not_by_prefix():
    keys = connector_keys()
    assert {"ssh_user", "ssh_key", "docker_identifier", "chroot_directory", "fake_responses"} <= keys
    assert unknown_keys({"ssh_user", "_sudo", "docker_key_sha256", "docker_packages"}) == []
    # The kit's own docker_* settings share pyinfra's docker_ prefix: a typo in one is not pyinfra's.
    assert unknown_keys({"docker_key_sha265", "docker_packges", "ssh_usr", "chroot_dir"}) == [
        "chroot_dir", "docker_key_sha265", "docker_packges", "ssh_usr",
    ]  # fmt: skip


def test_the_connector_keys_outside_pyinfras_tables_are_still_read_by_the_installed_pyinfra():
    connectors = get_all_connectors()
    for name, keys in CONNECTOR_KEYS_OUTSIDE_META.items():
        source = inspect.getsource(inspect.getmodule(connectors[name]))
        for key in keys:
            assert f'"{key}"' in source or f".{key}" in source, f"{key} no longer in pyinfra's {name} connector"


def test_no_kit_key_collides_with_a_connector_key():
    assert not kit_keys() & connector_keys()


def test_pci_gpus_are_display_and_accelerator_classes_of_any_vendor():
    lines = [
        "0000:00:00.0 0x060000 0x1022 0x14a4",  # AMD's CPU host bridge: not a GPU
        "0000:03:00.0 0x030000 0x1a03 0x2000",  # the BMC's ASPEED VGA: a display, another vendor
        "0000:29:00.0 0x038000 0x1002 0x740c",  # MI250X GCD
        "0000:05:00.0 0x120000 0x1002 0x74a1",  # MI300X: processing accelerator class
        "0000:18:00.0 0x030200 0x10de 0x2330",  # H100
    ]
    assert [(gpu["vendor"], gpu["ids"]) for gpu in PciGpus().process(lines)] == [
        ("0x1a03", "1a03:2000"), ("AMD", "1002:740c"), ("AMD", "1002:74a1"), ("NVIDIA", "10de:2330"),
    ]  # fmt: skip
    assert PciGpus().process([]) == []


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["uid=0 user=root", "sudo=missing"], {"uid": 0, "user": "root", "sudo": "missing"}),
        (["uid=1000 user=bob", "sudo=refused"], {"uid": 1000, "user": "bob", "sudo": "refused"}),
        ([], {"uid": None, "user": "", "sudo": "missing"}),
    ],
)
def test_privilege_fact(lines, expected):
    assert Privilege().process(lines) == expected


def test_group_data_paths_are_read_from_pyinfras_command_line():
    argv = ["inventory.py", "deploy.py", "--group-data", "site", "--dry", "--group-data=/etc/kit/mi300x.py"]
    assert cli_group_data_paths(argv) == (Path("site"), Path("/etc/kit/mi300x.py"))
    assert cli_group_data_paths(["inventory.py", "--group-data"]) == ()


def test_the_file_a_value_came_from_follows_pyinfras_precedence(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    (first / "mi300x.py").write_text("expected_gpu_count = 8\n")
    (second / "all.py").write_text("expected_gpu_count = 4\ngpu_users: list = []\n")
    # A group's file beats all.py in any folder; a later folder beats an earlier one; the kit's own files last.
    assert defining_file("expected_gpu_count", "mi300x", (first, second)) == first / "mi300x.py"
    assert defining_file("expected_gpu_count", "mi250", (first, second)) == second / "all.py"
    assert defining_file("gpu_users", "mi250", (first, second)) == second / "all.py"
    assert defining_file("kit_image_tag", "mi250", (first, second)).parts[-2:] == ("group_data", "mi250.py")


@pytest.mark.parametrize("path", ["provision/hosts.yaml", "pyinfra-debug.log", ".venv-provision/bin/python"])
def test_what_a_provisioning_run_leaves_in_the_repository_is_ignored_by_git(path):
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, f"{path} is not in .gitignore"
