import json
from importlib import metadata

import pytest

from checks import platform_check as pc
from checks.core import FAIL, PASS, SKIP, WARN
from checks.gpu import Device, Probe

from .conftest import H200, MI300X, make_ctx

BNB = metadata.version("bitsandbytes")


def cuda_build_info(tmp_path, **change):
    payload = {"schema": 1, "vendor": "cuda", "torch_version": "2.3.1+cu121", "cuda_version": "12.1",
               "gpu_archs": ["8.0", "9.0"], "bitsandbytes_version": BNB, **change}
    path = tmp_path / "build.json"
    path.write_text(json.dumps(payload))
    return {"KIT_BUILD_INFO": str(path)}


# --- platform.torch ---

def test_torch_pass_reports_backend_and_runtime():
    res = pc.torch_backend(make_ctx("cuda", (H200,), runtime="12.1", torch_version="2.3.1+cu121"))
    assert res.status == PASS and res.value == "torch 2.3.1+cu121 (CUDA 12.1)"


def test_torch_fail_when_it_does_not_import():
    ctx = make_ctx()
    ctx.cache["gpu"] = Probe(torch_version=None, import_error="OSError: libamdhip64.so: cannot open shared object")
    res = pc.torch_backend(ctx)
    assert res.status == FAIL and "libamdhip64" in res.detail and res.hint


def test_real_probe_on_this_machine_sees_its_torch():
    import torch

    from checks.core import Context

    res = pc.torch_backend(Context(env={}))
    assert res.status == PASS and torch.__version__ in res.value


# --- platform.pins ---

def test_pins_skip_outside_an_image(no_default_build_info):
    res = pc.pins(make_ctx())
    assert res.status == SKIP and "not a kit image" in res.detail


def test_pins_fail_when_named_file_is_missing(tmp_path):
    res = pc.pins(make_ctx(env={"KIT_BUILD_INFO": str(tmp_path / "nope.json")}))
    assert res.status == FAIL and "named by KIT_BUILD_INFO" in res.detail


def test_pins_fail_on_an_invalid_file(tmp_path):
    (tmp_path / "b.json").write_text("[]")
    res = pc.pins(make_ctx(env={"KIT_BUILD_INFO": str(tmp_path / "b.json")}))
    assert res.status == FAIL and "expected a JSON object" in res.detail


def test_pins_pass_when_everything_matches(tmp_path):
    ctx = make_ctx("cuda", (H200,), runtime="12.1", torch_version="2.3.1+cu121", env=cuda_build_info(tmp_path))
    res = pc.pins(ctx)
    assert res.status == PASS, res.detail
    assert res.data["bitsandbytes"] == {"pinned": BNB, "actual": BNB}


def test_pins_fail_names_each_difference(tmp_path):
    env = cuda_build_info(tmp_path, bitsandbytes_version="0.1.0")
    ctx = make_ctx("cuda", (H200,), runtime="12.4", torch_version="2.5.0+cu124", env=env)
    res = pc.pins(ctx)
    assert res.status == FAIL and res.value == "3 of 4 differ"
    assert "torch: image pins 2.3.1+cu121, found 2.5.0+cu124" in res.detail
    assert "CUDA runtime (torch.version.cuda): image pins 12.1, found 12.4" in res.detail
    assert f"bitsandbytes: image pins 0.1.0, found {BNB}" in res.detail


def test_pins_catch_a_cpu_torch_in_a_gpu_image(tmp_path):
    ctx = make_ctx("cpu", torch_version="2.3.1+cpu", env=cuda_build_info(tmp_path, torch_version="2.3.1"))
    res = pc.pins(ctx)
    assert res.status == FAIL and "backend: image pins cuda, found cpu" in res.detail


def test_pins_rocm_reads_the_rocm_version_file(tmp_path, monkeypatch):
    (tmp_path / "version").write_text("6.1.2-119\n")
    monkeypatch.setattr(pc, "ROCM_VERSION_FILE", tmp_path / "version")
    payload = {"schema": 1, "vendor": "rocm", "torch_version": "2.3.1+rocm6.0", "rocm_version": "6.1.2",
               "hip_version": "6.0.32830", "gpu_archs": ["gfx942"]}
    (tmp_path / "b.json").write_text(json.dumps(payload))
    env = {"KIT_BUILD_INFO": str(tmp_path / "b.json")}
    ok = make_ctx("hip", (MI300X,), runtime="6.0.32830-d62f6a171", torch_version="2.3.1+rocm6.0", env=env)
    assert pc.pins(ok).status == PASS
    (tmp_path / "version").write_text("6.2.0-1\n")
    bad = make_ctx("hip", (MI300X,), runtime="6.0.32830-d62f6a171", torch_version="2.3.1+rocm6.0", env=env)
    res = pc.pins(bad)
    assert res.status == FAIL and "image pins 6.1.2, found 6.2.0-1" in res.detail


@pytest.mark.parametrize(
    "pinned, actual, same",
    [("2.3.1", "2.3.1+rocm6.0", True), ("2.3.1+cu121", "2.3.1+cu121", True), ("2.3.1+cu121", "2.3.1+cu124", False),
     ("12.1", "12.1", True), ("6.1", "6.1.2-119", True), ("6.1", "6.10.0", False), ("0.49.2", None, False)],
)
def test_same_version(pinned, actual, same):
    assert pc._same_version(pinned, actual) is same


# --- platform.driver ---

@pytest.mark.parametrize(
    "driver, runtime, status",
    [((13, 0), "12.1", PASS), ((12, 4), "12.4", PASS), ((12, 2), "12.4", WARN), ((11, 8), "12.1", FAIL)],
)
def test_cuda_driver_rule(driver, runtime, status):
    assert pc.compare_cuda_driver(driver, runtime)[0] == status


def test_driver_pass_and_fail_on_cuda(monkeypatch):
    monkeypatch.setattr(pc, "_nvidia_driver_version", lambda: "580.159.03")
    monkeypatch.setattr(pc, "_cuda_driver_api_version", lambda: (13, 0))
    res = pc.driver(make_ctx("cuda", (H200,), runtime="12.1"))
    assert res.status == PASS and res.value == "driver 580.159.03 (CUDA 13.0)"
    monkeypatch.setattr(pc, "_cuda_driver_api_version", lambda: (11, 4))
    res = pc.driver(make_ctx("cuda", (H200,), runtime="12.1"))
    assert res.status == FAIL and "CUDA 11.4 only" in res.detail and res.hint
    monkeypatch.setattr(pc, "_cuda_driver_api_version", lambda: None)
    assert pc.driver(make_ctx("cuda", (H200,), runtime="12.1")).status == FAIL


def test_driver_rocm_reports_and_cpu_skips(tmp_path, monkeypatch):
    (tmp_path / "amdgpu").write_text("6.7.0\n")
    monkeypatch.setattr(pc, "AMDGPU_MODULE_VERSION", tmp_path / "amdgpu")
    monkeypatch.setattr(pc, "ROCM_VERSION_FILE", tmp_path / "absent")
    res = pc.driver(make_ctx("hip", (MI300X,), runtime="6.0.32830"))
    assert res.status == PASS and res.value == "amdgpu 6.7.0" and "not compared" in res.detail
    assert pc.driver(make_ctx()).status == SKIP


def test_driver_rocm_fails_when_userspace_and_torch_hip_differ(tmp_path, monkeypatch):
    (tmp_path / "rocm").write_text("6.1.2-119\n")
    monkeypatch.setattr(pc, "AMDGPU_MODULE_VERSION", tmp_path / "absent")
    monkeypatch.setattr(pc, "ROCM_VERSION_FILE", tmp_path / "rocm")
    same = pc.driver(make_ctx("hip", (MI300X,), runtime="6.1.40091-a8dbc0c19"))
    assert same.status == PASS
    other = pc.driver(make_ctx("hip", (MI300X,), runtime="6.0.32830-d62f6a171"))
    assert other.status == FAIL and "6.1.2" in other.detail and "HIP 6.0" in other.detail and other.hint


def test_nvidia_driver_version_from_proc(tmp_path, monkeypatch):
    (tmp_path / "version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.03  Release Build  (dvs-builder@U16)\n")
    monkeypatch.setattr(pc, "NVIDIA_PROC_VERSION", tmp_path / "version")
    assert pc._nvidia_driver_version() == "580.159.03"


# --- platform.gpus ---

@pytest.mark.parametrize(
    "device, targets, coverage",
    [("sm_90", ["sm_80", "sm_90"], "native"), ("sm_90", ["8.0", "9.0"], "native"), ("sm_86", ["8.0"], "native"),
     ("sm_90", ["8.0"], None), ("sm_90", ["8.0+PTX"], "ptx"), ("sm_90", ["compute_90"], "ptx"),
     ("sm_89", ["sm_90"], None), ("sm_90", ["9.0a"], "native"), ("sm_100", ["sm_90"], None),
     ("sm_100", ["sm_90", "compute_90"], "ptx"), ("gfx942", ["gfx90a", "gfx942"], "native"),
     ("gfx942", ["gfx90a"], None), ("gfx90a", ["gfx90a:xnack-"], "native")],
)
def test_arch_coverage(device, targets, coverage):
    assert pc.arch_coverage(device, targets) == coverage


def test_gpus_warn_on_a_cpu_only_host(no_default_build_info):
    res = pc.gpus(make_ctx(torch_version="2.13.0+cpu"))
    assert res.status == WARN and "CPU-only build" in res.detail


def test_gpus_fail_when_a_gpu_was_expected(no_default_build_info, tmp_path, monkeypatch):
    res = pc.gpus(make_ctx(require_gpu=True))
    assert res.status == FAIL and "--require-gpu" in res.detail
    from checks import access

    monkeypatch.setattr(access, "DEV", tmp_path)
    (tmp_path / "kfd").write_text("")
    res = pc.gpus(make_ctx("hip", (), runtime="6.0", device_error="RuntimeError: No HIP GPUs are available"))
    assert res.status == FAIL and "No HIP GPUs" in res.detail and "/dev/kfd" in res.hint
    assert "GPU device nodes exist" in res.detail


def test_a_cuda_torch_on_a_machine_without_gpus_is_a_warning(no_default_build_info):
    """PyPI's default torch is a CUDA build: on a laptop or CI machine that is no reason to fail."""
    ctx = make_ctx("cuda", (), runtime="12.1", torch_version="2.3.1+cu121")
    assert pc.gpus(ctx).status == WARN
    res = pc.driver(ctx)
    assert res.status == SKIP and "no GPU visible" in res.detail


def test_gpu_image_without_gpu_fails(tmp_path):
    ctx = make_ctx("cuda", (), runtime="12.1", torch_version="2.3.1+cu121", env=cuda_build_info(tmp_path))
    res = pc.gpus(ctx)
    assert res.status == FAIL and "was built for cuda" in res.detail


def test_gpus_pass_with_native_code_everywhere(tmp_path):
    two = (H200, Device(1, "NVIDIA H200", "sm_90", 139.8))
    ctx = make_ctx("cuda", two, ("sm_80", "sm_90"), "12.1", env=cuda_build_info(tmp_path))
    res = pc.gpus(ctx)
    assert res.status == PASS and res.value == "2 x NVIDIA H200 (sm_90)"
    assert [d["index"] for d in res.data["devices"]] == [0, 1]


def test_gpus_fail_when_image_extensions_miss_the_arch(tmp_path):
    payload = {"schema": 1, "vendor": "rocm", "torch_version": "2.3.1", "rocm_version": "6.1.2",
               "gpu_archs": ["gfx90a"]}
    (tmp_path / "b.json").write_text(json.dumps(payload))
    ctx = make_ctx("hip", (MI300X,), ("gfx90a", "gfx942"), "6.0", env={"KIT_BUILD_INFO": str(tmp_path / "b.json")})
    res = pc.gpus(ctx)
    assert res.status == FAIL and "built for gfx90a, not gfx942" in res.detail and "GPU_ARCHS" in res.hint


def test_gpus_fail_when_torch_misses_the_arch_and_warn_on_ptx(no_default_build_info):
    res = pc.gpus(make_ctx("cuda", (H200,), ("sm_70", "sm_80"), "12.1"))
    assert res.status == FAIL and "torch has no kernels for sm_90" in res.detail
    res = pc.gpus(make_ctx("cuda", (H200,), ("sm_80", "compute_80"), "12.1"))
    assert res.status == WARN and "PTX" in res.detail


# --- the kit's CPU image: no build info, recognised by its manifest (kit/manifest.py) ---

def cpu_manifest(tmp_path, torch="2.13.0+cpu", **packages) -> dict:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema": 1, "vendor": "cpu", "revision": "abc123-dirty-0123456789ab",
                                "packages": {"torch": torch, "bitsandbytes": BNB, **packages}}))
    return {"KIT_IMAGE_MANIFEST": str(path)}


def test_pins_recognise_the_kit_cpu_image_by_its_manifest(no_default_build_info, tmp_path):
    res = pc.pins(make_ctx(torch_version="2.13.0+cpu", env=cpu_manifest(tmp_path)))
    assert res.status == PASS and res.value == "kit cpu image, 2 match", res.detail
    assert "not a kit image" not in res.detail and "revision abc123-dirty-0123456789ab" in res.detail
    assert res.data["manifest"]["vendor"] == "cpu"


def test_pins_in_the_cpu_image_catch_a_replaced_torch(no_default_build_info, tmp_path):
    res = pc.pins(make_ctx(torch_version="2.5.0+cu124", env=cpu_manifest(tmp_path)))
    assert res.status == FAIL and "torch: image has 2.13.0+cpu, found 2.5.0+cu124" in res.detail and res.hint


def test_pins_name_an_unreadable_manifest(no_default_build_info, tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    res = pc.pins(make_ctx(env={"KIT_IMAGE_MANIFEST": str(path)}))
    assert res.status == FAIL and str(path) in res.detail and "KIT_IMAGE_MANIFEST" in res.hint


def test_gpus_hint_inside_the_cpu_image_does_not_say_run_inside_the_kit_image(no_default_build_info, tmp_path):
    res = pc.gpus(make_ctx(torch_version="2.13.0+cpu", env=cpu_manifest(tmp_path)))
    assert res.status == WARN and "kit's CPU image" in res.hint and "in the kit image" not in res.hint
    outside = pc.gpus(make_ctx(torch_version="2.13.0+cpu"))
    assert "in the kit image" in outside.hint
