"""Platform checks: torch and its backend, the image's pins, the driver, the GPUs and their architectures."""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

from checks.access import cpu_machine, gpu_expected
from checks.build_info import STACK_ARCH_KEYS, build_info_path, image_build_info, normalize_arch
from checks.core import FAIL, PASS, SKIP, WARN, Context, Result, check
from checks.gpu import gpu_skip_reason, probe
from kit.manifest import manifest_path

ROCM_VERSION_FILE = Path("/opt/rocm/.info/version")
NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")
AMDGPU_MODULE_VERSION = Path("/sys/module/amdgpu/version")


@check("platform.torch")
def torch_backend(ctx: Context) -> Result:
    """torch imports; which backend (HIP, CUDA, CPU) and runtime version it was built for."""
    p = probe(ctx)
    if p.torch_version is None:
        return Result(
            "platform.torch", FAIL, "not importable", p.import_error,
            hint="install the image's pinned torch (requirements/image-*.lock), or run inside the kit image",
        )
    runtime = {"hip": f"HIP {p.runtime_version}", "cuda": f"CUDA {p.runtime_version}"}.get(p.backend, "CPU-only build")
    return Result(
        "platform.torch", PASS, f"torch {p.torch_version} ({runtime})",
        f"vendor: {p.vendor}", data={"torch": p.torch_version, "backend": p.backend, "runtime": p.runtime_version},
    )


def _installed(dist: str) -> Optional[str]:
    for name in (dist, dist.replace("_", "-")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _same_version(pinned: str, actual: Optional[str]) -> bool:
    """Equal, or equal up to the pin's precision: pin "12.1" matches "12.1.1"; pin "2.3.1" matches "2.3.1+rocm6.0"."""
    if actual is None:
        return False
    if pinned == actual:
        return True
    public = actual.split("+", 1)[0]
    if "+" not in pinned and pinned == public:
        return True
    # Build suffixes: ROCm's "6.1.2-119", HIP's "6.0.32830-d62f6a171".
    return any(actual.startswith(pinned + sep) for sep in ".-+")


@check("platform.pins")
def pins(ctx: Context) -> Result:
    """Versions in use match the image's build info (torch, CUDA/ROCm runtime, flash-attn, bitsandbytes)."""
    info, why = image_build_info(ctx)
    if info is None:
        _, named = build_info_path(ctx.env)
        if why.startswith("no build info") and not named:
            manifest, problem = image_manifest(ctx)
            if manifest is not None or problem:
                return _pins_from_manifest(ctx, manifest, problem)
            return Result("platform.pins", SKIP, "no build info", f"{why}: not a kit image, nothing to compare")
        return Result("platform.pins", FAIL, "build info unreadable", why,
                      hint="rebuild the image (it writes the file), or point KIT_BUILD_INFO at a valid one")
    p = probe(ctx)
    comparisons: list[tuple[str, str, Optional[str]]] = []  # (what, pinned, actual)
    expected_backend = {"rocm": "hip", "cuda": "cuda"}[info.vendor]
    comparisons.append(("backend", expected_backend, p.backend))
    comparisons.append(("torch", info.torch_version, p.torch_version))
    if info.vendor == "cuda":
        comparisons.append(("CUDA runtime (torch.version.cuda)", info.cuda_version or "", p.runtime_version))
    else:
        rocm = ROCM_VERSION_FILE.read_text().strip() if ROCM_VERSION_FILE.exists() else None
        comparisons.append((f"ROCm ({ROCM_VERSION_FILE})", info.rocm_version or "", rocm))
        if info.hip_version:
            comparisons.append(("HIP (torch.version.hip)", info.hip_version, p.runtime_version))
    if info.flash_attn_version:
        comparisons.append(("flash-attn", info.flash_attn_version, _installed("flash_attn")))
    if info.bitsandbytes_version:
        comparisons.append(("bitsandbytes", info.bitsandbytes_version, _installed("bitsandbytes")))
    bad = [f"{what}: image pins {pinned}, found {actual or 'nothing'}" for what, pinned, actual in comparisons
           if not _same_version(pinned, actual)]
    data = {what: {"pinned": pinned, "actual": actual} for what, pinned, actual in comparisons}
    if bad:
        return Result(
            "platform.pins", FAIL, f"{len(bad)} of {len(comparisons)} differ", "; ".join(bad),
            hint="something replaced the image's packages (a pip install that pulled another torch breaks the "
                 "compiled extensions): rebuild the image, or reinstall from its lock file",
            data=data,
        )
    return Result("platform.pins", PASS, f"{len(comparisons)} match",
                  f"{info.path}: " + ", ".join(f"{w} {a}" for w, _, a in comparisons), data=data)


def image_manifest(ctx: Context) -> tuple[Optional[dict], str]:
    """The kit image's manifest (kit/manifest.py writes it in every image, the CPU one included), or (None, why)
    when it exists but cannot be read; (None, "") outside a kit image. The CPU image has no build-info file (that
    file describes the GPU builds' compiled extensions), so the manifest is how the checks recognise it."""

    def load() -> tuple[Optional[dict], str]:
        path = manifest_path(ctx.env)
        if not path.is_file():
            return None, ""
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            return None, f"{path}: cannot read the image manifest: {exc}"
        if not isinstance(manifest, dict) or not isinstance(manifest.get("packages"), dict):
            return None, f"{path}: the image manifest has no 'packages' object"
        return {**manifest, "path": str(path)}, ""

    return ctx.memo("image_manifest", load)


def _pins_from_manifest(ctx: Context, manifest: Optional[dict], problem: str) -> Result:
    """Inside a kit image without build info (the CPU image): torch and bitsandbytes as the manifest recorded
    them at build time against what imports now (a later pip install that replaced torch shows up here)."""
    if manifest is None:
        return Result("platform.pins", FAIL, "image manifest unreadable", problem,
                      hint="rebuild the image (Dockerfile.app writes the manifest), or point KIT_IMAGE_MANIFEST at "
                           "a valid one")
    packages = manifest["packages"]
    vendor = manifest.get("vendor", "unknown")
    comparisons = [("torch", packages.get("torch"), probe(ctx).torch_version)]
    if packages.get("bitsandbytes"):
        comparisons.append(("bitsandbytes", packages["bitsandbytes"], _installed("bitsandbytes")))
    data = {what: {"pinned": pinned, "actual": actual} for what, pinned, actual in comparisons}
    data["manifest"] = {"path": manifest["path"], "vendor": vendor, "revision": manifest.get("revision")}
    where = f"{manifest['path']} (kit {vendor} image, revision {manifest.get('revision', 'unknown')})"
    bad = [f"{what}: image has {pinned or 'nothing'}, found {actual or 'nothing'}" for what, pinned, actual
           in comparisons if not (pinned and _same_version(pinned, actual))]
    if bad:
        return Result("platform.pins", FAIL, f"{len(bad)} of {len(comparisons)} differ", f"{where}: " + "; ".join(bad),
                      hint="something replaced the image's packages: rebuild the image, or reinstall from its lock "
                           "file", data=data)
    return Result("platform.pins", PASS, f"kit {vendor} image, {len(comparisons)} match",
                  f"{where}: " + ", ".join(f"{w} {a}" for w, _, a in comparisons), data=data)


def _nvidia_driver_version() -> Optional[str]:
    if NVIDIA_PROC_VERSION.exists():
        m = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9][0-9.]+)", NVIDIA_PROC_VERSION.read_text())
        if m:
            return m.group(1)
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def _cuda_driver_api_version() -> Optional[tuple[int, int]]:
    """The newest CUDA version the installed driver supports (cuDriverGetVersion), e.g. (13, 0)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return version.value // 1000, (version.value % 1000) // 10


def compare_cuda_driver(driver: tuple[int, int], runtime: str) -> tuple[str, str]:
    """CUDA's rule: a driver runs runtimes up to the CUDA version it reports; within one major version an older
    driver still runs a newer runtime (minor version compatibility) but kernels shipped as PTX then fail to JIT."""
    r_major, r_minor = (int(x) for x in runtime.split(".")[:2])
    if driver >= (r_major, r_minor):
        return PASS, f"driver supports CUDA {driver[0]}.{driver[1]} >= runtime {runtime}"
    if driver[0] == r_major:
        return WARN, (f"driver supports CUDA {driver[0]}.{driver[1]} < runtime {runtime}: runs under minor version "
                      "compatibility, but PTX-only kernels will not JIT")
    return FAIL, f"driver supports CUDA {driver[0]}.{driver[1]} only; torch needs CUDA {runtime}"


@check("platform.driver")
def driver(ctx: Context) -> Result:
    """The kernel driver's version, and (CUDA) whether it supports torch's CUDA runtime."""
    p = probe(ctx)
    if cpu_machine(ctx):
        return Result("platform.driver", SKIP, "", gpu_skip_reason(ctx))
    if p.backend == "cuda":
        version = _nvidia_driver_version()
        api = _cuda_driver_api_version()
        if api is None:
            return Result("platform.driver", FAIL, f"driver {version or 'not found'}",
                          "libcuda.so.1 does not load or cuDriverGetVersion failed",
                          hint="install the NVIDIA driver on the host and run the container with --gpus all "
                               "(NVIDIA Container Toolkit)")
        status, detail = compare_cuda_driver(api, p.runtime_version or "0.0")
        hint = "" if status == PASS else "upgrade the host's NVIDIA driver, or use an image built for an older CUDA"
        return Result("platform.driver", status, f"driver {version or '?'} (CUDA {api[0]}.{api[1]})", detail, hint,
                      data={"driver": version, "driver_cuda": f"{api[0]}.{api[1]}", "runtime": p.runtime_version})
    if p.backend == "hip":
        version = AMDGPU_MODULE_VERSION.read_text().strip() if AMDGPU_MODULE_VERSION.exists() else None
        rocm = ROCM_VERSION_FILE.read_text().strip() if ROCM_VERSION_FILE.exists() else None
        value = f"amdgpu {version or '(in-kernel, no version file)'}"
        mismatch = _hip_release_mismatch(rocm, p.runtime_version)
        if mismatch:
            # bitsandbytes names its HIP library after the ROCm it was compiled on and loads the one named after
            # torch.version.hip (bitsandbytes/cextension.py): two releases mean "Configured ROCm binary not found".
            return Result("platform.driver", FAIL, value, mismatch,
                          hint="use torch built for this ROCm release (stack.env ROCM_TORCH_VERSION) or the matching "
                               "ROCm userspace; docs/images.md explains the pair",
                          data={"amdgpu": version, "rocm": rocm, "hip": p.runtime_version})
        return Result("platform.driver", PASS, value,
                      f"ROCm userspace {rocm or 'not under /opt/rocm'}, torch HIP {p.runtime_version}; reported, not "
                      "compared: AMD publishes no machine-readable driver/ROCm rule (see its compatibility matrix)",
                      data={"amdgpu": version, "rocm": rocm, "hip": p.runtime_version})
    return Result("platform.driver", SKIP, "", gpu_skip_reason(ctx) or "no GPU backend")


def _hip_release_mismatch(rocm: Optional[str], hip: Optional[str]) -> str:
    """A sentence when the ROCm userspace (/opt/rocm) and torch's HIP differ in major.minor, else ""."""
    if not rocm or not hip:
        return ""
    ours, torchs = rocm.split(".")[:2], hip.split(".")[:2]
    if ours == torchs:
        return ""
    return (f"ROCm userspace {rocm} but torch is built for HIP {hip}: extensions compiled here (bitsandbytes) "
            f"look for a library of HIP {'.'.join(torchs)} and were built for {'.'.join(ours)}")


def _cuda_targets(target: str) -> tuple[list[tuple[int, int, bool]], list[tuple[int, int]]]:
    """Split one target into (cubins, ptx): "9.0+PTX" -> ([(9, 0, False)], [(9, 0)]); "sm_90a" -> ([(9, 0, True)], []);
    "compute_90" -> ([], [(9, 0)]). The bool marks arch-specific cubins ("a"/"f"), which run only on that exact chip."""
    t = target.strip().lower()
    with_ptx = t.endswith("+ptx")
    t = t.removesuffix("+ptx")
    ptx_only = t.startswith("compute_")
    t = t.split("_", 1)[1] if "_" in t else t
    exact = t.endswith(("a", "f"))
    t = t.rstrip("af")
    major, minor = t.split(".", 1) if "." in t else (t[:-1], t[-1:])
    if not (major.isdigit() and minor.isdigit()):
        return [], []
    cc = (int(major), int(minor))
    cubins = [] if ptx_only else [(cc[0], cc[1], exact)]
    ptx = [cc] if (ptx_only or with_ptx) else []
    return cubins, ptx


def arch_coverage(device_arch: str, targets: Iterable[str]) -> Optional[str]:
    """"native" when compiled code runs on the device, "ptx" when only a PTX JIT would, None when nothing does.

    ROCm code objects run only on their exact gfx target. CUDA cubins run on the same major version with an equal
    or higher minor (sm_80 code runs on sm_86, not on sm_90); PTX JIT-compiles for any equal or newer device."""
    targets = list(targets)
    if device_arch.startswith("gfx"):
        return "native" if device_arch in {normalize_arch(t) for t in targets} else None
    dev_major, dev_minor, _ = _cuda_targets(device_arch)[0][0]
    cubins: list[tuple[int, int, bool]] = []
    ptx: list[tuple[int, int]] = []
    for t in targets:
        c, p = _cuda_targets(t)
        cubins += c
        ptx += p
    if any(major == dev_major and (minor == dev_minor or (minor < dev_minor and not exact))
           for major, minor, exact in cubins):
        return "native"
    if any(cc <= (dev_major, dev_minor) for cc in ptx):
        return "ptx"
    return None


def _group_names(devices) -> str:
    counts: dict[tuple[str, str], int] = {}
    for d in devices:
        counts[(d.name, d.arch)] = counts.get((d.name, d.arch), 0) + 1
    return ", ".join(f"{n} x {name} ({arch})" for (name, arch), n in counts.items())


@check("platform.gpus")
def gpus(ctx: Context) -> Result:
    """GPU count, names and architectures; each architecture is one torch and the image's extensions were built for."""
    reason = gpu_skip_reason(ctx)
    p = probe(ctx)
    info, _ = image_build_info(ctx)
    if reason is not None:
        expected = gpu_expected(ctx)
        if expected:
            return Result("platform.gpus", FAIL, "0 GPUs", f"{reason}; a GPU was expected: {'; '.join(expected)}",
                          hint="check the access.* rows: device nodes passed to the container (ROCm: --device "
                               "/dev/kfd --device /dev/dri; NVIDIA: --gpus all) and *_VISIBLE_DEVICES")
        manifest, _ = image_manifest(ctx)
        where = ("this is the kit's CPU image: for GPU fine-tuning run the ROCm or CUDA image (KIT_VENDOR=rocm|cuda) "
                 "on a GPU node" if manifest is not None and manifest.get("vendor") == "cpu"
                 else "for GPU fine-tuning run this on a GPU node or in the kit image")
        return Result("platform.gpus", WARN, "0 GPUs", f"{reason}; GPU checks below are skipped",
                      hint=f"fine for the CPU demo; {where}")
    problems, notes = [], []
    archs = sorted({d.arch for d in p.devices})
    for arch in archs:
        by_torch = arch_coverage(arch, p.torch_archs)
        if by_torch is None:
            problems.append(f"torch has no kernels for {arch} (built for {', '.join(p.torch_archs) or 'nothing'})")
        elif by_torch == "ptx":
            notes.append(f"torch runs {arch} through PTX JIT only (slow first start)")
        if info is not None:
            by_image = arch_coverage(arch, info.gpu_archs)
            if by_image is None:
                problems.append(f"the image's extensions were built for {', '.join(info.gpu_archs)}, not {arch}")
            elif by_image == "ptx":
                notes.append(f"the image's extensions run {arch} through PTX JIT only")
    if info is None:
        notes.append("no build info: the extensions' architectures were not compared")
    data = {"devices": [{"index": d.index, "name": d.name, "arch": d.arch, "memory_gib": d.memory_gib}
                        for d in p.devices], "torch_archs": list(p.torch_archs),
            "image_archs": list(info.gpu_archs) if info else None}
    value = _group_names(p.devices)
    if problems:
        return Result("platform.gpus", FAIL, value, "; ".join(problems + notes),
                      hint=f"add this GPU's architecture to {STACK_ARCH_KEYS['rocm']} (ROCm) / "
                           f"{STACK_ARCH_KEYS['cuda']} (CUDA) in stack.env and rebuild the image, or run on the GPUs "
                           "it was built for", data=data)
    status = WARN if any("PTX" in n for n in notes) else PASS
    detail = "; ".join(notes) or f"torch and the image's extensions have native code for {', '.join(archs)}"
    hint = "add this architecture to the build's arch list for native kernels" if status == WARN else ""
    return Result("platform.gpus", status, value, detail, hint, data=data)
