"""The compiled extensions fit the torch they run with, computed from stack.env and the locks alone (no image):
bitsandbytes' produced vs. loaded library name, the HIP/CUDA release each extension is compiled with vs. torch's,
and the parsers the build-time arch check (docker/check_extensions.py) relies on."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from .dockerfiles import ROCM_TORCH_VERSIONS, ROOT, STACK, rocm_torch_hip_release

spec = importlib.util.spec_from_file_location("check_extensions", ROOT / "docker" / "check_extensions.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

LOCK = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", re.M)


def locked(name: str) -> dict[str, str]:
    return {n.lower(): v for n, v in LOCK.findall((ROOT / "requirements" / name).read_text())}


def built_only(tmp_path, name: str):
    """A package folder holding only what the image's HIP build leaves: the one library it wrote."""
    folder = tmp_path / "libs"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize("position", sorted(ROCM_TORCH_VERSIONS))
def test_rocm_bitsandbytes_builds_the_library_name_it_will_load(tmp_path, position):
    pytest.importorskip("bitsandbytes")
    # Built: CMake names it after `hipconfig --version` of the userspace (ROCM_VERSION's major.minor).
    built = check.bnb_built_library("rocm", STACK["ROCM_VERSION"])
    # Loaded: bitsandbytes' own get_cuda_bnb_library_path with torch.version.hip of either ROCM_TORCH position.
    loaded = check.bnb_loaded_library("rocm", rocm_torch_hip_release(position), library_dir=built_only(tmp_path, built))
    assert built == loaded == "libbitsandbytes_rocm61.so", (
        f"bitsandbytes builds {built} on ROCm {STACK['ROCM_VERSION']} but under torch "
        f"{ROCM_TORCH_VERSIONS[position]} ({position}) loads {loaded}")


def test_the_name_check_catches_the_old_pair(tmp_path):
    pytest.importorskip("bitsandbytes")
    # ROCm 6.1 userspace + torch 2.3.1+rocm6.0: the mismatch issue 9 found ("Configured ROCm binary not found").
    assert check.bnb_built_library("rocm", "6.1.2") == "libbitsandbytes_rocm61.so"
    assert check.bnb_loaded_library("rocm", check.torch_gpu_version_from_wheel("2.3.1+rocm6.0"),
                                    library_dir=tmp_path) == "libbitsandbytes_rocm60.so"


def test_the_loaded_name_is_bitsandbytes_own_answer(tmp_path, monkeypatch):
    """Against the installed bitsandbytes: our answer is what its loader function returns under such a torch."""
    pytest.importorskip("bitsandbytes")
    import torch
    from bitsandbytes import cextension, cuda_specs

    for vendor, version in (("cuda", "12.1"), ("rocm", "6.1.40093-bd86f1708"), ("cuda", "13.0")):
        monkeypatch.setattr(torch.version, "cuda", version if vendor == "cuda" else None)
        monkeypatch.setattr(torch.version, "hip", version if vendor == "rocm" else None)
        if hasattr(cuda_specs.get_cuda_version_tuple, "cache_clear"):
            cuda_specs.get_cuda_version_tuple.cache_clear()  # it caches torch's answer
        specs = {"highest_compute_capability": (9, 0), "cuda_version_string": cuda_specs.get_cuda_version_string(),
                 "cuda_version_tuple": cuda_specs.get_cuda_version_tuple()}
        fields = {f.name for f in __import__("dataclasses").fields(cuda_specs.CUDASpecs)}
        theirs = cextension.get_cuda_bnb_library_path(cuda_specs.CUDASpecs(**{k: v for k, v in specs.items()
                                                                               if k in fields}))
        assert check.bnb_loaded_library(vendor, version) == theirs.name, (vendor, version)
    if hasattr(cuda_specs.get_cuda_version_tuple, "cache_clear"):
        cuda_specs.get_cuda_version_tuple.cache_clear()
    assert check.bnb_loaded_library("cpu", None) == "libbitsandbytes_cpu.so"


def test_a_bitsandbytes_without_the_naming_function_is_named(tmp_path):
    pytest.importorskip("bitsandbytes")
    installed = Path(importlib.util.find_spec("bitsandbytes").submodule_search_locations[0])
    for name in ("consts.py", "cuda_specs.py"):
        (tmp_path / name).write_text((installed / name).read_text())
    (tmp_path / "cextension.py").write_text("def get_library_path_v2(specs):\n    return 'x'\n")
    with pytest.raises(check.ExtensionCheckError, match="no get_cuda_bnb_library_path"):
        check.bnb_loaded_library("cuda", "12.1", package_dir=tmp_path)


def test_bitsandbytes_import_time_logs_are_held_back(capsys):
    import logging

    with check.held_back_logs("bitsandbytes") as held:
        try:
            raise OSError("libbitsandbytes_cpu.so: cannot open shared object file")
        except OSError:
            logging.getLogger("bitsandbytes.cextension").error("bitsandbytes library load error: x", exc_info=True)
    assert held == ["bitsandbytes library load error: x"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("position", sorted(ROCM_TORCH_VERSIONS))
def test_rocm_extensions_are_compiled_with_torchs_hip_release(position):
    userspace = check.major_minor(STACK["ROCM_VERSION"])
    assert userspace == rocm_torch_hip_release(position)
    assert userspace == check.torch_gpu_version_from_wheel(ROCM_TORCH_VERSIONS["prebuilt"])
    assert f"rocm{userspace}" in STACK["ROCM_TORCH_INDEX_URL"]
    assert STACK["ROCM_BASE"].split("@")[0].endswith(f":{STACK['ROCM_VERSION']}"), "ROCM_BASE is another release"


def test_cuda_flash_attn_is_compiled_with_torchs_cuda_release():
    # PyPI's torch wheel for Linux is built for the CUDA release of the nvidia-cuda-runtime wheel it pins.
    torch_lock = locked("image-cuda-torch.lock")
    assert torch_lock["torch"] == STACK["CUDA_TORCH_VERSION"]
    torch_cuda = check.major_minor(torch_lock["nvidia-cuda-runtime-cu12"])
    assert check.major_minor(STACK["CUDA_VERSION"]) == torch_cuda
    assert STACK["CUDA_DEVEL_BASE"].split("@")[0].split(":")[1].startswith(STACK["CUDA_VERSION"])
    # bitsandbytes' PyPI wheel will look for this file under that torch (docker/check_extensions.py imports
    # proves it is in the wheel and loads, at build time).
    assert check.bnb_loaded_library("cuda", torch_cuda) == f"libbitsandbytes_cuda{torch_cuda.replace('.', '')}.so"


@pytest.mark.parametrize("version, short", [("6.1.40093-bd86f1708", "61"), ("6.0.32830-d62f6a171", "60"),
                                            ("12.1", "121"), ("6.2.41133", "62")])
def test_short_versions_follow_bitsandbytes(version, short):
    assert check.short_version(version) == short


def test_bad_versions_are_named():
    with pytest.raises(check.ExtensionCheckError, match="no major.minor"):
        check.short_version("rocm")
    with pytest.raises(check.ExtensionCheckError, match=r"\+rocmX.Y"):
        check.torch_gpu_version_from_wheel("2.3.1")


# Listings written in the tools' output formats (roc-obj-ls: bundle, target id, URI; cuobjdump --list-elf: one
# cubin a line). Not captured from a real run: no ROCm or CUDA toolchain exists where these tests were written.
ROC_OBJ_LS = """\
1       host-x86_64-unknown-linux                                           file:///w/flash_attn_2_cuda.so#offset=1052672&size=0
1       hipv4-amdgcn-amd-amdhsa--gfx90a:sramecc+:xnack-                     file:///w/flash_attn_2_cuda.so#offset=1052672&size=88520
1       hipv4-amdgcn-amd-amdhsa--gfx942:sramecc+:xnack-                     file:///w/flash_attn_2_cuda.so#offset=1141192&size=90112
2       host-x86_64-unknown-linux                                           file:///w/flash_attn_2_cuda.so#offset=1231304&size=0
2       hipv4-amdgcn-amd-amdhsa--gfx90a:sramecc+:xnack-                     file:///w/flash_attn_2_cuda.so#offset=1231304&size=51200
"""
CUOBJDUMP = """\
ELF file    1: flash_attn_2_cuda.1.sm_80.cubin
ELF file    2: flash_attn_2_cuda.2.sm_90.cubin
ELF file    3: flash_attn_2_cuda.3.sm_80.cubin
"""


def test_arch_parsers_read_the_tool_listings():
    assert check.amdgpu_targets(ROC_OBJ_LS) == {"gfx90a", "gfx942"}
    assert check.cuda_targets(CUOBJDUMP) == {"8.0", "9.0"}
    assert check.cuda_targets("ELF file    1: x.1.sm_90a.cubin") == {"9.0"}
    assert check.amdgpu_targets("") == set()


def test_arch_comparison_wants_exactly_the_asked_archs():
    expected = check.parse_archs(STACK["ROCM_GPU_ARCHS"])
    check.compare_archs("lib.so", check.amdgpu_targets(ROC_OBJ_LS), expected)
    with pytest.raises(check.ExtensionCheckError, match=r"lib.so: .*missing \['gfx942'\]"):
        check.compare_archs("lib.so", {"gfx90a"}, expected)
    with pytest.raises(check.ExtensionCheckError, match=r"extra \['gfx1100'\]"):
        check.compare_archs("lib.so", {"gfx90a", "gfx942", "gfx1100"}, expected)
    check.compare_archs("fa.so", check.cuda_targets(CUOBJDUMP), check.parse_archs(STACK["CUDA_ARCH_LIST"]))


def test_wheel_check_refuses_a_toolkit_other_than_torchs(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.version, "hip", "6.0.32830-d62f6a171")
    with pytest.raises(check.ExtensionCheckError, match="compiled with rocm 6.1 but torch .* built for 6.0"):
        check.check_wheels("rocm", "6.1.40093-bd86f1708", "gfx90a", [tmp_path / "x.whl"])


def test_wheel_check_refuses_a_bitsandbytes_wheel_without_the_loaded_name(tmp_path, monkeypatch):
    import zipfile
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.version, "hip", "6.1.40091-a8dbc0c19")
    pytest.importorskip("bitsandbytes")
    installed = Path(importlib.util.find_spec("bitsandbytes").submodule_search_locations[0])
    wheel = tmp_path / "bitsandbytes-0.48.2-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:  # the installed bitsandbytes' naming code, a library of ROCm 7
        for name in ("consts.py", "cuda_specs.py", "cextension.py"):
            archive.writestr(f"bitsandbytes/{name}", (installed / name).read_text())
        archive.writestr("bitsandbytes/libbitsandbytes_rocm70.so", b"")
    with pytest.raises(check.ExtensionCheckError, match="loads libbitsandbytes_rocm61.so"):
        check.check_wheels("rocm", "6.1.40093", "gfx90a", [wheel])


def test_import_check_passes_here_and_names_the_library():
    pytest.importorskip("bitsandbytes")
    lines = check.check_imports()
    assert any("bitsandbytes" in line and "loads" in line for line in lines)


MAPS = """\
7f00-7f01 r-xp 00000000 08:01 11 /opt/venv/lib/python3.10/site-packages/torch/lib/libamdhip64.so
7f01-7f02 r--p 00100000 08:01 11 /opt/venv/lib/python3.10/site-packages/torch/lib/libamdhip64.so
7f02-7f03 r-xp 00000000 08:01 12 /opt/venv/lib/python3.10/site-packages/torch/lib/libhsa-runtime64.so
7f03-7f04 rw-p 00000000 00:00 0
7f04-7f05 r-xp 00000000 08:01 13 /opt/venv/lib/python3.10/site-packages/bitsandbytes/libbitsandbytes_rocm61.so
"""


def test_one_hip_runtime_in_the_process_is_reported():
    line = check.one_runtime_copy(MAPS, check.HIP_RUNTIME_LIBRARIES)
    assert "libamdhip64.so from /opt/venv/lib/python3.10/site-packages/torch/lib/libamdhip64.so" in line


def test_a_second_hip_runtime_copy_fails():
    maps = MAPS + "7f05-7f06 r-xp 00000000 08:01 14 /opt/rocm-6.1.2/lib/libamdhip64.so.6.1.60102\n"
    with pytest.raises(check.ExtensionCheckError, match="two copies .*libamdhip64.so"):
        check.one_runtime_copy(maps, check.HIP_RUNTIME_LIBRARIES)
