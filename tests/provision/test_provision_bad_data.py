"""Bad inventory data stops `pyinfra provision/inventory.py provision/deploy.py` while it is still planning.

Run through the real CLI against pyinfra's @fake connector, so nothing could be changed even if a check were
missing; "before any change" is asserted from pyinfra's output: no operation ever started.
"""

from __future__ import annotations

import pytest

from .provision_harness import PYINFRA, run_pyinfra, write_hosts_file

pytestmark = pytest.mark.skipif(not PYINFRA.exists(), reason=f"pyinfra is not installed at {PYINFRA}")

FAKE_UBUNTU = {
    "fake_delay": 0,
    "fake_delay_jitter": 0,
    "fake_responses": {"uname -r": "6.8.0-45-generic", "uname -s": "Linux"},
    "os_codename": "jammy",
    "verify_gpus": False,
    "verify_kit_image": False,
}


def run_with(tmp_path, groups: dict) -> tuple[int, str]:
    result = run_pyinfra(write_hosts_file(tmp_path / "hosts.yaml", groups), timeout=120)
    return result.returncode, result.stdout + result.stderr


def node(group: str = "mi300x", **data) -> dict:
    return {group: [{"name": "@fake/node-01", "data": {**FAKE_UBUNTU, **data}}]}


def test_good_data_runs_to_the_end(tmp_path):
    """The control: the same harness with valid data plans and executes (on a fake host, so harmlessly)."""
    nvidia_node = {"name": "@fake/node-02", "data": FAKE_UBUNTU}
    returncode, output = run_with(tmp_path, {**node("mi300x"), "nvidia": [nvidia_node]})
    assert returncode == 0, output[-3000:]
    assert "--> Starting operation" in output


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (
            {"mi325x": ["@fake/node-01"]},
            "unknown group(s) mi325x; use mi250, mi300x, nvidia",
        ),
        (
            {"mi250": ["@fake/node-01"], "mi300x": ["@fake/node-01"]},
            "mi300x[0]: @fake/node-01 is already listed under mi250",
        ),
        (
            node(rocm_version="6.2.0"),
            "rocm_version '6.2.0' has no pins; set rocm_version to one of 6.1.0, 6.1.1, 6.1.2, 6.1.3 in "
            "provision/group_data/mi300x.py",
        ),
        (
            node(amd_key_url=None),
            "amd_key_url is not set; set it in provision/group_data/mi300x.py",
        ),
        (
            node("nvidia", container_toolkit_key_url=""),
            "container_toolkit_key_url is not set; set it in provision/group_data/nvidia.py",
        ),
        (
            node(docker_repo_url="download.docker.com/linux/ubuntu"),
            "docker_repo_url must be a URL starting with https://, http://, file:/",
        ),
        (
            node(amd_key_sha256="abc123"),
            "amd_key_sha256 must be a lowercase 64-character sha256 hex digest",
        ),
        (
            node("nvidia", nvidia_driver_branch="470"),
            "nvidia_driver_branch '470' is not supported; set it to one of 535, 550, 560",
        ),
        (
            node("nvidia", tune_numa_balancing_off=True),
            "tune_* settings are AMD's MI300X/MI250 guidance",
        ),
        (
            node(kit_image_name="clinical-finetune-kit:latest"),
            "kit_image_name must be the name without a tag; the tag is kit_image_tag",
        ),
        (
            node(gpu_users=["bob"]),
            "gpu_users lists bob, which do not exist on the host",
        ),
        (
            node(kit_image_tarball="/nonexistent/kit.tar"),
            "kit_image_tarball names '/nonexistent/kit.tar', which is not a file on this (the control) machine",
        ),
    ],
    ids=[
        "unknown-group",
        "host-in-two-groups",
        "rocm-without-pins",
        "missing-key-url",
        "empty-toolkit-key-url",
        "url-without-scheme",
        "bad-key-checksum",
        "unsupported-driver-branch",
        "tuning-on-nvidia",
        "image-name-with-tag",
        "missing-user",
        "missing-tarball",
    ],
)
def test_bad_data_stops_before_any_operation_with_what_to_set(tmp_path, groups, message):
    returncode, output = run_with(tmp_path, groups)
    assert returncode != 0
    assert "pyinfra error" in output and message in " ".join(output.split()), output[-3000:]
    assert "--> Starting operation" not in output
