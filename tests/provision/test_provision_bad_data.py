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
    # Every repository and key URL answers the HEAD request made before any change.
    # The driver "changes", so the control run reboots: uptime is read before and after (equal: it came back).
    "fake_responses": {
        "uname -r": "6.8.0-45-generic",
        "uname -s": "Linux",
        "curl --head": "ok",
        "/proc/uptime": "86400",
        "id -u": ["uid=0 user=root", "sudo=ok"],  # the privilege check: the run executes as root
    },
    "os_codename": "jammy",
    "verify_gpus": False,
    "verify_kit_image": False,
}


# The PCI scan of provision/facts.py's PciGpus (matched by substring), and what sysfs shows on two kinds of host:
# address, class, vendor, device. MI250X: display controllers 0x0380 of AMD (0x1002); H100: 0x0302 of NVIDIA.
PCI_SCAN = "/sys/bus/pci/devices/*"
MI250_PCI = ["0000:00:00.0 0x060000 0x1022 0x14a4", "0000:29:00.0 0x038000 0x1002 0x740c",
             "0000:2c:00.0 0x038000 0x1002 0x740c"]  # fmt: skip
H100_PCI = ["0000:00:00.0 0x060000 0x8086 0x09a2", "0000:18:00.0 0x030200 0x10de 0x2330"]


def run_with(tmp_path, groups: dict, *extra: str) -> tuple[int, str]:
    result = run_pyinfra(write_hosts_file(tmp_path / "hosts.yaml", groups), *extra, timeout=120)
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
            (
                "rocm_version '6.2.0' has no pins; set rocm_version to one of 6.1.0, 6.1.1, 6.1.2, 6.1.3 in "
                "provision/group_data/mi300x.py"
            ),
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
        (
            node(tune_numa_balancing=True),
            "unknown setting 'tune_numa_balancing' (did you mean tune_numa_balancing_off?)",
        ),
        (
            node("nvidia", nvidia_fabric_manager=True),
            "unknown setting 'nvidia_fabric_manager' (did you mean nvidia_fabricmanager?)",
        ),
        (
            node(expected_gpu_archs=["MI300X"]),
            "expected_gpu_archs must list gfx names such as gfx942 for mi300x hosts (got MI300X)",
        ),
        (
            node("nvidia", expected_gpu_archs=["sm_90"]),
            'expected_gpu_archs must list such as "9.0" for nvidia hosts (got sm_90)',
        ),
        (
            node(expected_gpu_archs=["gfx1100"]),
            "expected_gpu_archs lists gfx1100, which the image is not built for (ROCM_GPU_ARCHS=",
        ),
        (
            node(cpu_vendor="arm"),
            "cpu_vendor must be one of amd, intel or None (got 'arm')",
        ),
        (
            node(tune_iommu_passthrough=True, fake_responses={**FAKE_UBUNTU["fake_responses"], "/proc/cpuinfo": ""}),
            "cpu_vendor is None and the host's /proc/cpuinfo gives vendor_id 'nothing'",
        ),
        (
            node(
                docker_repo_url="http://127.0.0.1:9/docker",
                fake_responses={
                    "-o /dev/null http://127.0.0.1:9/docker": "curl: (7) Failed to connect to 127.0.0.1 port 9",
                    **FAKE_UBUNTU["fake_responses"],
                },
            ),
            (
                "host @fake/node-01: cannot reach from the host, before any change: docker_repo_url: "
                "http://127.0.0.1:9/docker/dists/jammy/Release (curl: (7) Failed to connect to 127.0.0.1 port 9)"
            ),
        ),
        (
            node(docker_key_sha265="0" * 64, docker_packages=["docker-ce"]),
            "unknown setting 'docker_key_sha265' (did you mean docker_key_sha256?)",
        ),
        (
            node(docker_packges=["docker-ce"]),
            "unknown setting 'docker_packges' (did you mean docker_packages?)",
        ),
        (
            node(expected_gpu_count=0),
            "expected_gpu_count is 0, which no node can pass",
        ),
        (
            node("nvidia", fake_responses={**FAKE_UBUNTU["fake_responses"], PCI_SCAN: MI250_PCI}),
            (
                "host @fake/node-01: is in group nvidia (NVIDIA GPUs) but its PCI bus (/sys/bus/pci/devices) shows "
                "AMD 1002:740c at 0000:29:00.0, AMD 1002:740c at 0000:2c:00.0 and no NVIDIA GPU; nothing was "
                "installed. move it under mi250 or mi300x in the hosts file"
            ),
        ),
        (
            node(fake_responses={**FAKE_UBUNTU["fake_responses"], PCI_SCAN: H100_PCI}),
            "is in group mi300x (AMD GPUs) but its PCI bus (/sys/bus/pci/devices) shows NVIDIA 10de:2330",
        ),
        (
            node(fake_responses={**FAKE_UBUNTU["fake_responses"], "id -u": ["uid=1000 user=bob", "sudo=ok"]}),
            (
                "host @fake/node-01: the run executes as bob (uid 1000), not root, and without --sudo; nothing was "
                "changed. To fix: rerun with --sudo (make provision PROVISION_ARGS=--sudo): sudo -n works for bob"
            ),
        ),
        (
            node(fake_responses={**FAKE_UBUNTU["fake_responses"], "id -u": ["uid=1000 user=bob", "sudo=refused"]}),
            "sudo -n true fails for bob (no sudo rights, or sudo wants a password)",
        ),
        (
            {"mi250": [], "mi300x": None, "nvidia": []},
            "no hosts: every group (mi250, mi300x, nvidia) is empty",
        ),
        (
            {},
            "no hosts: every group (mi250, mi300x, nvidia) is empty",
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
        "typo-numa-switch",
        "typo-fabric-manager",
        "arch-as-marketing-name",
        "arch-as-sm-name",
        "arch-the-image-lacks",
        "unknown-cpu-vendor",
        "iommu-without-cpu-vendor",
        "unreachable-repository",
        "typo-docker-key-checksum",
        "typo-docker-packages",
        "zero-gpus-expected",
        "amd-gpus-under-nvidia",
        "nvidia-gpus-under-mi300x",
        "not-root-without-sudo",
        "not-root-sudo-refused",
        "empty-groups",
        "empty-inventory",
    ],
)
def test_bad_data_stops_before_any_operation_with_what_to_set(tmp_path, groups, message):
    returncode, output = run_with(tmp_path, groups)
    assert returncode != 0
    assert "pyinfra error" in output and message in " ".join(output.split()), output[-3000:]
    assert "--> Starting operation" not in output


def assert_stopped_before_any_operation(returncode: int, output: str, message: str) -> None:
    assert returncode != 0
    assert "pyinfra error" in output and message in " ".join(output.split()), output[-3000:]
    assert "--> Starting operation" not in output
    assert "Traceback" not in output


def test_the_right_vendors_gpus_pass_the_vendor_check(tmp_path):
    amd = node("mi250", fake_responses={**FAKE_UBUNTU["fake_responses"], PCI_SCAN: MI250_PCI})
    returncode, output = run_with(tmp_path, amd, "--dry")
    assert returncode == 0, output[-3000:]


def test_a_hosts_file_with_a_yaml_syntax_error_names_file_and_line(tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("mi300x:\n  - name: node-01\n    data: {ssh_user: ubuntu\nnvidia: []\n")
    result = run_pyinfra(hosts, timeout=120)
    output = result.stdout + result.stderr
    assert_stopped_before_any_operation(result.returncode, output, f"{hosts}:4:7: not valid YAML:")
    assert "flow mapping that starts at line 3" in output and "<unicode string>" not in output


def test_group_data_for_a_group_that_does_not_exist_is_refused(tmp_path):
    extra = tmp_path / "site-data"
    extra.mkdir()
    (extra / "mi250x.py").write_text("expected_gpu_count = 8\n")
    returncode, output = run_with(tmp_path, node(), "--group-data", str(extra))
    assert_stopped_before_any_operation(
        returncode, output, f"--group-data {extra}: {extra}/mi250x.py is data for group 'mi250x', which does not exist"
    )


def test_a_group_data_path_that_does_not_exist_is_refused(tmp_path):
    returncode, output = run_with(tmp_path, node(), "--group-data", str(tmp_path / "nowhere"))
    assert_stopped_before_any_operation(returncode, output, f"--group-data {tmp_path}/nowhere: no such file or folder")


@pytest.mark.parametrize("stem", ["mi300x", "all"])
def test_a_bad_key_from_a_group_data_folder_names_that_folders_file(tmp_path, stem):
    extra = tmp_path / "site-data"
    extra.mkdir()
    (extra / f"{stem}.py").write_text('amd_key_sha256 = "abc123"\ndocker_packges = ["docker-ce"]\n')

    returncode, output = run_with(tmp_path, node(), "--group-data", str(extra))
    assert_stopped_before_any_operation(
        returncode, output, f"fix or remove it in {extra}/{stem}.py (from --group-data)"
    )
    (extra / f"{stem}.py").write_text('amd_key_sha256 = "abc123"\n')
    returncode, output = run_with(tmp_path, node(), "--group-data", str(extra))
    assert_stopped_before_any_operation(returncode, output, f"set it in {extra}/{stem}.py (from --group-data)")
    assert "provision/group_data/mi300x.py" not in output
