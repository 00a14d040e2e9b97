"""Build-time proof that the compiled extensions fit the torch in the image; any failure fails the image build.

    check_extensions.py wheels --vendor rocm --toolkit-version "$(hipconfig --version)" --archs "gfx90a;gfx942" W.whl...
        (build stage) every native library in the wheels carries code for exactly the asked GPU archs (roc-obj-ls
        on ROCm, cuobjdump --list-elf on CUDA); the compiler's HIP/CUDA release is torch's; a bitsandbytes wheel
        holds the library name its loader will ask for under this torch.
    check_extensions.py imports
        (app stage) bitsandbytes' native library for this torch exists and loads, and flash_attn's .so imports.
        No GPU is needed: bitsandbytes picks the file by torch.version.hip / torch.version.cuda.

The name rules mirror bitsandbytes 0.48/0.49: CMakeLists.txt names the HIP build ``libbitsandbytes_rocm<MM>`` after
``hipconfig --version`` (major.minor, dot dropped) and bitsandbytes/cextension.py loads
``libbitsandbytes_{rocm|cuda}<MM>`` after torch.version.hip / torch.version.cuda. Stdlib only, Python 3.10+;
tests/images/test_check_extensions.py runs the pure functions here.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

_MAJOR_MINOR = re.compile(r"(\d+)\.(\d+)")
_AMDGPU_TARGET = re.compile(r"amdgcn-amd-amdhsa-[a-z]*-(gfx[0-9a-f]+)")
_CUBIN = re.compile(r"\.sm_(\d+)[a-z]?\.cubin\b")


class ExtensionCheckError(RuntimeError):
    """The image's extensions do not fit its torch: the message says which file and what was expected."""


def short_version(version: str) -> str:
    """``6.1.40093-bd86f1708`` -> ``61``, ``12.1`` -> ``121``: the digits bitsandbytes puts in a library name."""
    match = _MAJOR_MINOR.search(version)
    if match is None:
        raise ExtensionCheckError(f"no major.minor version in {version!r}")
    return f"{int(match.group(1)) * 10 + int(match.group(2))}"


def major_minor(version: str) -> str:
    match = _MAJOR_MINOR.search(version)
    if match is None:
        raise ExtensionCheckError(f"no major.minor version in {version!r}")
    return f"{match.group(1)}.{match.group(2)}"


def bnb_built_library(vendor: str, toolkit_version: str) -> str:
    """The file bitsandbytes' CMake build writes for this compiler (hipconfig / nvcc version)."""
    prefix = {"rocm": "rocm", "cuda": "cuda"}[vendor]
    return f"libbitsandbytes_{prefix}{short_version(toolkit_version)}.so"


def bnb_loaded_library(vendor: str, torch_gpu_version: Optional[str]) -> str:
    """The file bitsandbytes' loader asks for under a torch whose torch.version.hip/.cuda is ``torch_gpu_version``."""
    if vendor == "cpu" or not torch_gpu_version:
        return "libbitsandbytes_cpu.so"
    prefix = {"rocm": "rocm", "cuda": "cuda"}[vendor]
    return f"libbitsandbytes_{prefix}{short_version(torch_gpu_version)}.so"


def torch_gpu_version_from_wheel(torch_version: str) -> str:
    """``2.4.1+rocm6.1`` -> ``6.1``: a PyTorch ROCm wheel's local version names the ROCm release it was built for
    (its torch.version.hip starts with that major.minor)."""
    match = re.search(r"\+rocm(\d+\.\d+)", torch_version)
    if match is None:
        raise ExtensionCheckError(f"{torch_version!r} is not a PyTorch ROCm wheel version (+rocmX.Y)")
    return match.group(1)


def amdgpu_targets(listing: str) -> set[str]:
    """GPU archs in a code-object listing (roc-obj-ls, clang-offload-bundler --list): ``hipv4-amdgcn-amd-amdhsa--
    gfx90a:sramecc+:xnack-`` -> ``gfx90a``. Host entries are ignored."""
    return set(_AMDGPU_TARGET.findall(listing))


def cuda_targets(listing: str) -> set[str]:
    """Compute capabilities in ``cuobjdump --list-elf`` output: ``...sm_80.cubin`` -> ``8.0``, ``sm_90a`` -> ``9.0``."""
    return {f"{int(digits[:-1])}.{digits[-1]}" for digits in _CUBIN.findall(listing)}


def parse_archs(text: str) -> set[str]:
    """``gfx90a;gfx942`` or ``8.0 9.0`` or ``8.0,9.0`` -> a set (the forms stack.env and TORCH_CUDA_ARCH_LIST use)."""
    return {item for item in re.split(r"[;,\s]+", text.strip()) if item}


def compare_archs(library: str, found: set[str], expected: set[str]) -> None:
    if found != expected:
        raise ExtensionCheckError(
            f"{library}: GPU code for {sorted(found) or 'no arch'}, expected exactly {sorted(expected)} "
            f"(missing {sorted(expected - found)}, extra {sorted(found - expected)})")


def _listing(vendor: str, library: Path) -> str:
    tool = ["roc-obj-ls", str(library)] if vendor == "rocm" else ["cuobjdump", "--list-elf", str(library)]
    result = subprocess.run(tool, capture_output=True, text=True)
    if result.returncode != 0:
        raise ExtensionCheckError(f"{' '.join(tool)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result.stdout


def check_wheels(vendor: str, toolkit_version: str, archs: str, wheels: list[Path]) -> list[str]:
    """Build-stage check of compiled wheels; returns one line per checked library."""
    import torch

    torch_gpu = torch.version.hip if vendor == "rocm" else torch.version.cuda
    if not torch_gpu:
        raise ExtensionCheckError(f"torch {torch.__version__} is not a {vendor} build")
    if major_minor(toolkit_version) != major_minor(torch_gpu):
        raise ExtensionCheckError(f"the extensions are compiled with {vendor} {major_minor(toolkit_version)} but torch "
                                  f"{torch.__version__} is built for {major_minor(torch_gpu)}")
    expected = parse_archs(archs)
    parse = amdgpu_targets if vendor == "rocm" else cuda_targets
    report = []
    for wheel in wheels:
        with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(wheel) as archive:
            libraries = [name for name in archive.namelist() if name.endswith(".so")]
            if not libraries:
                raise ExtensionCheckError(f"{wheel.name}: no native library inside")
            if wheel.name.startswith("bitsandbytes-"):
                wanted = bnb_loaded_library(vendor, torch_gpu)
                if not any(Path(name).name == wanted for name in libraries):
                    raise ExtensionCheckError(f"{wheel.name} holds {libraries}, but under torch {torch.__version__} "
                                              f"bitsandbytes loads {wanted}")
            for name in libraries:
                library = Path(archive.extract(name, folder))
                if Path(name).name == "libbitsandbytes_cpu.so":
                    continue  # the CPU fallback has no GPU code by design
                compare_archs(f"{wheel.name}:{name}", parse(_listing(vendor, library)), expected)
                report.append(f"{wheel.name}:{name}: {sorted(expected)}")
    return report


def check_imports() -> list[str]:
    """App-stage check: every installed extension's native code loads under this image's torch."""
    import torch

    vendor = "rocm" if torch.version.hip else "cuda" if torch.version.cuda else "cpu"
    report = [f"torch {torch.__version__} ({vendor})"]
    import bitsandbytes

    package = Path(bitsandbytes.__file__).parent
    library = package / bnb_loaded_library(vendor, torch.version.hip or torch.version.cuda)
    if not library.is_file():
        present = sorted(p.name for p in package.glob("libbitsandbytes_*"))
        raise ExtensionCheckError(f"bitsandbytes {bitsandbytes.__version__} under torch {torch.__version__} loads "
                                  f"{library.name}, which is not installed (present: {present})")
    ctypes.CDLL(str(library))  # resolves its HIP/CUDA dependencies now, as bitsandbytes will on the GPU node
    report.append(f"bitsandbytes {bitsandbytes.__version__}: {library.name} loads")
    if vendor != "cpu":
        flash_attn = importlib.import_module("flash_attn")
        native = importlib.import_module("flash_attn_2_cuda")  # the compiled module (also its name on ROCm)
        report.append(f"flash_attn {flash_attn.__version__}: {Path(native.__file__).name} loads")
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    wheels = commands.add_parser("wheels")
    wheels.add_argument("--vendor", choices=("rocm", "cuda"), required=True)
    wheels.add_argument("--toolkit-version", required=True, help="hipconfig --version / nvcc's release")
    wheels.add_argument("--archs", required=True)
    wheels.add_argument("wheel", nargs="+", type=Path)
    commands.add_parser("imports")
    args = parser.parse_args(argv)
    try:
        if args.command == "wheels":
            lines = check_wheels(args.vendor, args.toolkit_version, args.archs, args.wheel)
        else:
            lines = check_imports()
    except (ExtensionCheckError, ImportError, OSError) as error:
        print(f"check_extensions: FAILED: {error}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"check_extensions: ok: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
