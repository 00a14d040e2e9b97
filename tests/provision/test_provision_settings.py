"""provision/settings.py on its own: defaults from group_data/all.py and stack.env, checked before any change."""

from __future__ import annotations

import pytest

from kit.stack import read_stack
from provision import stack_defaults
from provision.host_data import ProvisionDataError, kit_keys
from provision.settings import resolve

from .fakehost import GROUP_DATA, group_data

FACTS = {"kernel": "6.8.0-45-generic", "codename": "jammy", "cpu_vendor_id": "AuthenticAMD"}


def settings_for(group: str, stack_file=None, monkeypatch=None, **data):
    if stack_file is not None:
        monkeypatch.setattr(stack_defaults, "STACK_FILE", stack_file)
    return resolve("node-01", [group], {**group_data(group), **data}, FACTS)


def test_release_branch_and_gpu_targets_default_to_what_the_images_are_built_for():
    stack = read_stack()
    assert settings_for("mi300x").rocm_version == stack["ROCM_VERSION"]
    assert settings_for("nvidia").nvidia_driver_branch == stack["NVIDIA_DRIVER_BRANCH"]
    assert settings_for("nvidia").driver_packages == (f"cuda-drivers-{stack['NVIDIA_DRIVER_BRANCH']}",)
    assert settings_for("nvidia").expected_gpu_archs == tuple(stack["CUDA_ARCH_LIST"].split(";"))
    for group, arch in (("mi250", "gfx90a"), ("mi300x", "gfx942")):  # each AMD group narrows to its own model
        assert settings_for(group).expected_gpu_archs == (arch,)
        assert arch in stack["ROCM_GPU_ARCHS"].split(";")


def test_host_data_still_chooses_another_pinned_release():
    assert settings_for("mi250", rocm_version="6.1.3").rocm_version == "6.1.3"
    assert settings_for("nvidia", nvidia_driver_branch="535").driver_packages == ("cuda-drivers-535",)


def test_a_stack_release_without_pins_names_stack_env(tmp_path, monkeypatch):
    stack = tmp_path / "stack.env"
    stack.write_text("ROCM_VERSION=6.2.0\nROCM_GPU_ARCHS=gfx942\n")
    with pytest.raises(ProvisionDataError, match=r"rocm_version '6.2.0' \(ROCM_VERSION in stack.env\) has no pins"):
        settings_for("mi300x", stack, monkeypatch)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "stack.env: not found; it holds ROCM_VERSION, the default of rocm_version"),
        ("CUDA_VERSION=12.1.1\n", "stack.env: no ROCM_VERSION= line, which is the default of rocm_version"),
        ("ROCM_VERSION = 6.1.2\n", "stack.env:1: expected KEY=value"),
    ],
    ids=["no-file", "no-key", "malformed"],
)
def test_a_missing_or_broken_stack_file_is_a_clear_error(tmp_path, monkeypatch, content, message):
    stack = tmp_path / "stack.env"
    if content is not None:
        stack.write_text(content)
    with pytest.raises(ProvisionDataError, match=message):
        settings_for("mi300x", stack, monkeypatch)


def test_defaults_live_only_in_all_py():
    # The group files hold only what differs per GPU model; every key they set is one all.py defines.
    for group in ("mi250", "mi300x", "nvidia"):
        namespace: dict = {}
        exec((GROUP_DATA / f"{group}.py").read_text(), namespace)  # noqa: S102 - our own data file
        own = {key for key in namespace if not key.startswith("__")}
        assert own <= kit_keys(), own - kit_keys()
        assert own <= {"expected_gpu_archs", "kit_image_tag"}, own


def test_every_setting_is_required_from_the_data_not_defaulted_in_code():
    data = group_data("mi300x")
    del data["verify_gpus"]
    with pytest.raises(ProvisionDataError, match="verify_gpus must be True or False"):
        resolve("node-01", ["mi300x"], data, FACTS)
