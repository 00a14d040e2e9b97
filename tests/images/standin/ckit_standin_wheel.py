#!/usr/bin/env python3
"""Stand-in for the inside of one vendor compile: `pip wheel --no-build-isolation --no-deps ... --wheel-dir DIR .`
of FlashAttention (CK on ROCm, CUDA) or bitsandbytes (HIP), which need hipcc/nvcc and hours of compiling.

Installed as /usr/local/bin/ckit-standin-wheel in the stand-in vendor bases (scripts/ci/docker-gpu-standins.sh);
tests/images/test_gpu_dockerfiles_build.py swaps `pip wheel` for it in those RUN instructions and nothing else.
It takes the same arguments, environment and source tree, applies the naming rules of the real build and writes
the wheel the real build would write, so every instruction after it runs on artifacts named as the real ones:
- wheel file: ``{name}-{version}-{python tag}-{abi tag}-{platform}.whl`` of this interpreter (setuptools' rule for
  a distribution with extension modules), the version read where the project's own build reads it;
- FlashAttention: the extension ``flash_attn_2_cuda{EXT_SUFFIX}`` (its setup.py names it so on both vendors), GPU
  code for GPU_ARCHS on ROCm (allowed: gfx90a, gfx940, gfx941, gfx942) and for sm80 + sm90 on CUDA (2.6.3's
  setup.py hard-codes them; sm90 needs CUDA >= 11.8, and CUDA < 11.7 is refused);
- bitsandbytes (HIP): ``bitsandbytes/libbitsandbytes_rocm<hipconfig major.minor>.so`` (its CMakeLists.txt), GPU code
  for -DBNB_ROCM_ARCH of CMAKE_ARGS; -DCOMPUTE_BACKEND=hip is required.
- PyTorch (ROCm, Dockerfile.rocm's torch-compile): the tree must have been hipified (tools/amd_build/build_amd.py
  ran) and USE_ROCM=1 set; the version is PYTORCH_BUILD_VERSION (tools/generate_torch_version.py: with
  PYTORCH_BUILD_NUMBER 1 nothing is appended), else version.txt + ``+git``; ``torch/version.py`` records
  ``hip`` = hipconfig's full version (as the real build writes it) and ``cuda = None``; ``torch/lib/libtorch_hip.so``
  holds GPU code for PYTORCH_ROCM_ARCH. It runs before torch exists, so it does not import torch.
The libraries hold one ``ckit-standin-code-object <target>`` line per GPU target, which the stand-in roc-obj-ls and
cuobjdump list in the real tools' format. They are not loadable code.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

FA_ROCM_ARCHS = {"gfx90a", "gfx940", "gfx941", "gfx942"}
AMDGPU_FEATURES = {"gfx90a": ":sramecc+:xnack-", "gfx942": ":sramecc+:xnack-"}


def fail(message: str) -> None:
    print(f"ckit-standin-wheel: {message}", file=sys.stderr)
    raise SystemExit(1)


def package_version(source: Path, package: str) -> str:
    text = (source / package / "__init__.py").read_text()
    match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
    if match is None:
        fail(f"{package}/__init__.py has no __version__")
    return match.group(1)


def toolkit_release(command: list[str], pattern: str) -> tuple[int, int]:
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(pattern, output)
    if match is None:
        fail(f"no release in `{' '.join(command)}`: {output!r}")
    return int(match.group(1)), int(match.group(2))


def flash_attn_targets(hip: bool) -> list[str]:
    if hip:
        archs = [a for a in os.environ.get("GPU_ARCHS", "native").split(";") if a]
        unknown = [a for a in archs if a not in FA_ROCM_ARCHS]
        if unknown:
            fail(f"GPU_ARCHS {unknown}: FlashAttention (CK) builds only for {sorted(FA_ROCM_ARCHS)} ('native' needs a GPU)")
        return [f"hipv4-amdgcn-amd-amdhsa--{a}{AMDGPU_FEATURES.get(a, '')}" for a in archs]
    cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    release = toolkit_release([str(cuda_home / "bin" / "nvcc"), "-V"], r"release (\d+)\.(\d+)")
    if release < (11, 7):
        fail(f"FlashAttention is only supported on CUDA 11.7 and above, nvcc says {release}")
    return ["sm_80"] + (["sm_90"] if release >= (11, 8) else [])


def bnb_library(hip: bool) -> tuple[str, list[str]]:
    if not hip:
        fail("the CUDA image installs bitsandbytes' PyPI wheel: no bitsandbytes compile is stood in for CUDA")
    args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
    options = dict(a[2:].split("=", 1) for a in args if a.startswith("-D") and "=" in a)
    if options.get("COMPUTE_BACKEND") != "hip":
        fail(f"CMAKE_ARGS={os.environ.get('CMAKE_ARGS')!r}: -DCOMPUTE_BACKEND=hip expected")
    archs = [a for a in options.get("BNB_ROCM_ARCH", "").split(";") if a]
    if not archs:
        fail("CMAKE_ARGS has no -DBNB_ROCM_ARCH")
    major, minor = toolkit_release(["hipconfig", "--version"], r"(\d+)\.(\d+)")
    targets = [f"hipv4-amdgcn-amd-amdhsa--{a}{AMDGPU_FEATURES.get(a, '')}" for a in archs]
    return f"bitsandbytes/libbitsandbytes_rocm{major}{minor}.so", targets


def library_bytes(targets: list[str]) -> bytes:
    lines = ["ckit-standin: not loadable code; GPU targets of the compile this stands in for:"]
    return ("\n".join(lines + [f"ckit-standin-code-object {t}" for t in targets]) + "\n").encode()


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(wheel_dir: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    info = f"{name}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: ckit-standin-wheel\nRoot-Is-Purelib: false\n"
                              f"Tag: {tag}-{tag}-{platform}\n").encode()
    record = [record_line(path, data) for path, data in sorted(files.items())] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    path = wheel_dir / f"{name}-{version}-{tag}-{tag}-{platform}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def python_files(source: Path, package: str) -> dict[str, bytes]:
    return {p.relative_to(source).as_posix(): p.read_bytes() for p in sorted((source / package).rglob("*.py"))}


def torch_wheel(source: Path, wheel_dir: Path) -> Path:
    """The ROCm PyTorch build's wheel: checks what the real build needs from the Dockerfile's environment."""
    if not (source / "STANDIN-hipified").is_file():
        fail("the PyTorch tree was not hipified: run tools/amd_build/build_amd.py before a ROCm build")
    if os.environ.get("USE_ROCM") != "1":
        fail("USE_ROCM=1 expected for the ROCm build of PyTorch")
    archs = [a for a in os.environ.get("PYTORCH_ROCM_ARCH", "").split(";") if a]
    if not archs:
        fail("PYTORCH_ROCM_ARCH is empty: the real build would detect the local GPU, and CI has none")
    version = os.environ.get("PYTORCH_BUILD_VERSION")
    if version is None:
        version = (source / "version.txt").read_text().strip() + "+gitunknown"
    elif "PYTORCH_BUILD_NUMBER" not in os.environ:
        fail("PYTORCH_BUILD_VERSION without PYTORCH_BUILD_NUMBER (the real build asserts both)")
    elif int(os.environ["PYTORCH_BUILD_NUMBER"]) > 1:
        version += f".post{os.environ['PYTORCH_BUILD_NUMBER']}"
    hip = subprocess.run(["hipconfig", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    files = {"torch/__init__.py": b'"""ckit stand-in: the version strings of a ROCm PyTorch build only."""\n'
                                  b"from . import version\n__version__ = version.__version__\n",
             "torch/version.py": (f"__version__ = {version!r}\ndebug = False\ncuda = None\n"
                                  f"git_version = 'unknown'\nhip = {hip!r}\n").encode(),
             "torch/lib/libtorch_hip.so": library_bytes([f"hipv4-amdgcn-amd-amdhsa--{a}{AMDGPU_FEATURES.get(a, '')}"
                                                         for a in archs])}
    return write_wheel(wheel_dir, "torch", version, files)


def main(argv: list[str]) -> int:
    if "--wheel-dir" not in argv or not argv or argv[-1].startswith("-"):
        fail(f"expected pip wheel's arguments (... --wheel-dir DIR SOURCE), got {argv}")
    wheel_dir, source = Path(argv[argv.index("--wheel-dir") + 1]), Path(argv[-1]).resolve()
    if (source / "tools" / "amd_build" / "build_amd.py").is_file():
        wheel = torch_wheel(source, wheel_dir)
        print(f"ckit-standin-wheel: stood in for the ROCm PyTorch compile of {source}: wrote {wheel}", file=sys.stderr)
        return 0
    import torch  # as the real setup.py does: the vendor comes from the installed torch

    hip = bool(getattr(torch.version, "hip", None))
    if (source / "flash_attn" / "__init__.py").is_file():
        version = package_version(source, "flash_attn")
        local = os.environ.get("FLASH_ATTN_LOCAL_VERSION")
        version = f"{version}+{local}" if local else version
        files = python_files(source, "flash_attn")
        files["flash_attn_2_cuda" + sysconfig.get_config_var("EXT_SUFFIX")] = library_bytes(flash_attn_targets(hip))
        name = "flash_attn"
    elif (source / "bitsandbytes" / "__init__.py").is_file():
        version = package_version(source, "bitsandbytes")
        library, targets = bnb_library(hip)
        files = {**python_files(source, "bitsandbytes"), library: library_bytes(targets)}
        name = "bitsandbytes"
    else:
        fail(f"{source} is neither a FlashAttention nor a bitsandbytes source tree")
    wheel = write_wheel(wheel_dir, name, version, files)
    print(f"ckit-standin-wheel: stood in for the {'HIP' if hip else 'CUDA'} compile of {source}: wrote {wheel} "
          f"({', '.join(n for n in files if n.endswith('.so'))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
