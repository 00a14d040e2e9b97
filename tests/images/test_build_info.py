"""docker/write_build_info.py writes what `python -m checks` reads (checks/build_info.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .dockerfiles import ROOT

pytest.importorskip("torch")
from checks.build_info import load_build_info  # noqa: E402

spec = importlib.util.spec_from_file_location("write_build_info", ROOT / "docker" / "write_build_info.py")
write_build_info = importlib.util.module_from_spec(spec)
spec.loader.exec_module(write_build_info)


def test_rocm_build_info_is_valid_for_the_checks(tmp_path):
    rocm = tmp_path / "rocm"
    (rocm / ".info").mkdir(parents=True)
    (rocm / ".info" / "version").write_text("6.1.2-119\n")
    out = tmp_path / "etc" / "build.json"
    assert write_build_info.main(["--vendor", "rocm", "--gpu-archs", "gfx90a;gfx942", "--rocm-path", str(rocm),
                                  "--output", str(out), "--image", "test"]) == 0
    info = load_build_info(out)
    assert info.vendor == "rocm" and info.rocm_version == "6.1.2"
    assert info.gpu_archs == ("gfx90a", "gfx942")
    import torch
    assert info.torch_version == torch.__version__
    assert not list(out.parent.glob(".build-*")), "temporary file left behind"


def test_rocm_build_info_needs_a_rocm_install(tmp_path):
    with pytest.raises(SystemExit, match="no ROCm release"):
        write_build_info.main(["--vendor", "rocm", "--gpu-archs", "gfx942", "--rocm-path", str(tmp_path),
                               "--output", str(tmp_path / "b.json")])


def test_cuda_build_info_refuses_a_torch_without_cuda(tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(SystemExit, match="not a CUDA build"):
        write_build_info.main(["--vendor", "cuda", "--gpu-archs", "8.0;9.0", "--output", str(tmp_path / "b.json")])
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    out = tmp_path / "b.json"
    write_build_info.main(["--vendor", "cuda", "--gpu-archs", "8.0,9.0", "--output", str(out)])
    assert json.loads(out.read_text())["gpu_archs"] == ["8.0", "9.0"]
    assert load_build_info(out).cuda_version == "12.1"
