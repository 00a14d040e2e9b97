"""Build-time proof that the compiled extensions fit the torch in the image; any failure fails the image build.

    check_extensions.py wheels --vendor rocm --toolkit-version "$(hipconfig --version)" --archs "gfx90a;gfx942" W.whl...
        (build stage) every native library in the wheels carries code for exactly the asked GPU archs (roc-obj-ls
        on ROCm, cuobjdump --list-elf on CUDA); the compiler's HIP/CUDA release is torch's; a bitsandbytes wheel
        holds the library name its loader will ask for under this torch.
    check_extensions.py imports
        (app stage) bitsandbytes' native library for this torch exists and loads, and flash_attn's .so imports.
        No GPU is needed: bitsandbytes picks the file by torch.version.hip / torch.version.cuda.

Which file bitsandbytes loads is asked of bitsandbytes itself: its ``cextension.get_cuda_bnb_library_path`` (and
``cuda_specs`` for the version string, ``consts`` for folder and suffix), read from the installed package or the
wheel being checked and run with the image's torch spec (bnb_loaded_library), so a bitsandbytes upgrade that moves
the rule moves this check with it. The file a HIP build *writes* is CMake's rule (``libbitsandbytes_rocm<MM>``
after ``hipconfig --version``, bitsandbytes 0.48/0.49 CMakeLists.txt), kept here because CMake cannot be asked
without building. Stdlib only, Python 3.10+; tests/images/test_extension_abi.py runs the functions here against
the installed bitsandbytes.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ctypes
import dataclasses
import importlib
import importlib.util
import logging
import re
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path
from typing import Iterator, Optional

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


# Where bitsandbytes' loader names its library, by version: cextension.get_cuda_bnb_library_path(CUDASpecs) in
# 0.48.2 (the ROCm image's source build), 0.49.2 (the CUDA image's wheel) and 0.50 (CI's CPU venv); the spec's
# version string comes from cuda_specs.get_cuda_version_string(), and the folder and suffix from consts.py.
_BNB_FILES = ("consts.py", "cuda_specs.py", "cextension.py")
_BNB_NAMER = "get_cuda_bnb_library_path"


def _bnb_definitions(source: str, filename: str) -> ast.Module:
    """A module's imports (torch and bitsandbytes' own excepted: the caller provides those), functions, classes and
    literal constants: bitsandbytes' definitions without its import-time side effects (loading the native
    library, probing the GPU, logging about the builder)."""
    keep = []
    for node in ast.parse(source, filename).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if not any(n.split(".")[0] in ("torch", "bitsandbytes") for n in names):
                keep.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            keep.append(node)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            keep.append(node)
    return ast.Module(body=keep, type_ignores=[])


def bnb_loaded_library(vendor: str, torch_gpu_version: Optional[str], package_dir: Optional[Path] = None,
                       library_dir: Optional[Path] = None) -> str:
    """The file bitsandbytes' own loader asks for under a torch whose torch.version.hip/.cuda is
    ``torch_gpu_version``: runs bitsandbytes' naming function (``get_cuda_bnb_library_path``) from the sources in
    ``package_dir`` (default: the installed package, found without importing it) with that spec, so an upgrade
    that changes the rule changes this answer too. ``library_dir`` is where the loader looks for packaged libraries
    (0.50 picks among them; default: ``package_dir``). No GPU and no bitsandbytes import are needed."""
    if package_dir is None:
        spec = importlib.util.find_spec("bitsandbytes")
        if spec is None or not spec.submodule_search_locations:
            raise ExtensionCheckError("bitsandbytes is not installed: its library naming cannot be asked")
        package_dir = Path(list(spec.submodule_search_locations)[0])
    if vendor == "cpu" or not torch_gpu_version:
        # get_native_library()'s path when get_cuda_specs() is None (no GPU torch): the CPU library.
        return f"libbitsandbytes_cpu{_bnb_namespace(package_dir, library_dir, None, None)['DYNAMIC_LIBRARY_SUFFIX']}"
    namespace = _bnb_namespace(package_dir, library_dir, vendor, torch_gpu_version)
    if _BNB_NAMER not in namespace or "CUDASpecs" not in namespace:
        raise ExtensionCheckError(f"{package_dir}: bitsandbytes has no {_BNB_NAMER}/CUDASpecs any more: "
                                  "docker/check_extensions.py must follow its new loader")
    values = {"highest_compute_capability": (0, 0),  # unused by the naming; no GPU is asked
              "cuda_version_string": namespace["get_cuda_version_string"](),
              "cuda_version_tuple": namespace["get_cuda_version_tuple"]()}
    fields = {f.name for f in dataclasses.fields(namespace["CUDASpecs"])}
    specs = namespace["CUDASpecs"](**{k: v for k, v in values.items() if k in fields})
    return Path(namespace[_BNB_NAMER](specs)).name


def _bnb_namespace(package_dir: Path, library_dir: Optional[Path], vendor: Optional[str],
                   version: Optional[str]) -> dict:
    """bitsandbytes' naming definitions executed against a stand-in torch that reports the image's spec."""
    torch_stub = types.SimpleNamespace(version=types.SimpleNamespace(
        hip=version if vendor == "rocm" else None, cuda=version if vendor == "cuda" else None))
    # A module object of our own (dataclasses look their class's module up in sys.modules while building it).
    module = types.ModuleType("_check_extensions_bnb_naming")
    namespace = module.__dict__
    namespace.update(torch=torch_stub, logger=logging.getLogger("bitsandbytes.cextension"))
    sys.modules[module.__name__] = module
    try:
        for name in _BNB_FILES:
            path = package_dir / name
            if not path.is_file():
                raise ExtensionCheckError(f"{path} not found: is {package_dir} a bitsandbytes package?")
            source = path.read_text(encoding="utf-8")
            if name == "consts.py":  # plain constants (suffix, folder): run whole, as at import
                namespace["__file__"] = str(path)
                exec(compile(source, str(path), "exec"), namespace)
                namespace["PACKAGE_DIR"] = Path(library_dir or package_dir)  # where the loader looks for libraries
            else:
                exec(compile(_bnb_definitions(source, str(path)), str(path), "exec"), namespace)
    finally:
        del sys.modules[module.__name__]
    return namespace


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
                archive.extractall(folder)  # bitsandbytes' own naming code, from the very wheel being checked
                wanted = bnb_loaded_library(vendor, torch_gpu, Path(folder) / "bitsandbytes")
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


@contextlib.contextmanager
def held_back_logs(logger_name: str) -> Iterator[list[str]]:
    """Collect the first line of every WARNING+ record of ``logger_name`` (and its children) instead of printing.

    Why: on a builder without a GPU, ``import bitsandbytes`` logs its loader's fallback (0.48/0.49 on ROCm: an
    ERROR with a traceback, "bitsandbytes library load error ... libbitsandbytes_cpu.so", because a HIP-only build
    has no CPU library; on x86 CPUs with AVX512-BF16 a warning about optional CPU kernels). Those describe the
    builder, not the image, and read like a failed build; the caller reports them in one explained line."""
    held: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: held.append(record.getMessage().splitlines()[0] if record.getMessage() else "")
    logger = logging.getLogger(logger_name)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def check_imports() -> list[str]:
    """App-stage check: every installed extension's native code loads under this image's torch."""
    import torch

    vendor = "rocm" if torch.version.hip else "cuda" if torch.version.cuda else "cpu"
    report = [f"torch {torch.__version__} ({vendor})"]
    with held_back_logs("bitsandbytes") as held:
        import bitsandbytes
    if held:
        report.append(f"bitsandbytes logged {len(held)} message(s) while importing on this GPU-less builder, held "
                      f"back (first: {held[0][:160]!r}): it probes for a GPU at import and reports the fallback it "
                      "would take without one; the library the GPU node loads is checked next")
    package = Path(bitsandbytes.__file__).parent
    library = package / bnb_loaded_library(vendor, torch.version.hip or torch.version.cuda, package)
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
    if vendor == "rocm":
        report.append(one_runtime_copy(Path("/proc/self/maps").read_text(), HIP_RUNTIME_LIBRARIES))
    return report


# The HIP runtime and the HSA runtime under it: two copies of either in one process are two runtimes.
HIP_RUNTIME_LIBRARIES = ("libamdhip64.so", "libhsa-runtime64.so")


def one_runtime_copy(maps: str, libraries: tuple[str, ...]) -> str:
    """Which file each runtime library was loaded from (``/proc/self/maps`` text); fails on two copies.

    Why: torch's ROCm wheel bundles its own HIP libraries in torch/lib (unversioned file names, original SONAMEs,
    found by RPATH), and the extensions were linked against the system's (/opt/rocm/lib). With torch imported
    first, the dynamic linker matches the extensions' NEEDED entries to torch's already loaded copies by SONAME,
    so one runtime serves all; a library linked by another SONAME would load a second copy next to it."""
    paths: dict[str, set[str]] = {name: set() for name in libraries}
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        path = fields[5].strip() if len(fields) == 6 else ""
        for name in libraries:
            if Path(path).name.startswith(name):
                paths[name].add(path)
    twice = {name: sorted(found) for name, found in paths.items() if len(found) > 1}
    if twice:
        raise ExtensionCheckError(f"two copies of a runtime library in one process: {twice}: the extensions and "
                                  "torch would run on different HIP runtimes")
    loaded = ", ".join(f"{name} from {next(iter(found))}" for name, found in paths.items() if found)
    return f"one copy of each runtime library: {loaded or 'none loaded'}"


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
