"""Fakes shared by the checks tests: a Context whose torch probe, environment and credentials are chosen."""

from __future__ import annotations

import os
from typing import Optional

import pytest

from checks.core import Context
from checks.gpu import Device, Probe

os.environ.setdefault("HF_HUB_OFFLINE", "1")

H200 = Device(0, "NVIDIA H200", "sm_90", 139.8)
MI300X = Device(0, "AMD Instinct MI300X", "gfx942", 192.0)


def make_ctx(backend: str = "cpu", devices: tuple[Device, ...] = (), torch_archs: tuple[str, ...] = (),
             runtime: Optional[str] = None, torch_version: str = "2.3.1", env: Optional[dict] = None,
             require_gpu: bool = False, device_error: str = "") -> Context:
    """A Context with a fake GPU probe and an environment without KIT_BUILD_INFO unless ``env`` gives one."""
    ctx = Context(require_gpu=require_gpu, env=dict(env or {}))
    ctx.cache["gpu"] = Probe(torch_version=torch_version, backend=backend, runtime_version=runtime,
                             devices=devices, torch_archs=torch_archs, device_error=device_error)
    return ctx


@pytest.fixture(autouse=True)
def empty_dev(monkeypatch, tmp_path_factory):
    """Checks look at an empty fake /dev unless a test builds one: the host's real nodes (a GPU machine has
    /dev/nvidiactl) must not change what a faked probe means."""
    from checks import access

    monkeypatch.setattr(access, "DEV", tmp_path_factory.mktemp("dev"))


@pytest.fixture
def no_default_build_info(monkeypatch, tmp_path):
    """Point the default build-info path somewhere empty, so a real /etc file on the test host cannot leak in."""
    from checks import build_info

    monkeypatch.setattr(build_info, "DEFAULT_PATH", tmp_path / "absent" / "build.json")
    # Nor the image manifest, which makes the checks recognise the kit's CPU image (tests run inside it too).
    from kit import manifest

    monkeypatch.setattr(manifest, "DEFAULT_PATH", tmp_path / "absent" / "manifest.json")
