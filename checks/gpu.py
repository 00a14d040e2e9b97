"""One probe of torch and the GPUs it sees, shared by all checks (and replaceable by a fake in tests).

``probe(ctx)`` imports torch once and records what every check needs: the backend (hip / cuda / cpu), the
runtime version, and each visible device's name and architecture. GPU checks call ``gpu_skip_reason`` first: it
returns why they cannot run (no torch, CPU-only build, no device visible) or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from checks.build_info import normalize_arch
from checks.core import Context


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    arch: str  # normalized: "sm_90", "gfx942"
    memory_gib: float


@dataclass(frozen=True)
class Probe:
    torch_version: Optional[str]  # None: torch does not import
    import_error: str = ""
    backend: str = "cpu"  # "hip", "cuda" or "cpu" (a CPU-only torch build)
    runtime_version: Optional[str] = None  # torch.version.hip or torch.version.cuda
    devices: tuple[Device, ...] = ()
    torch_archs: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): what torch's own kernels were built for
    device_error: str = ""  # why devices could not be listed on a GPU build

    @property
    def vendor(self) -> str:
        return {"hip": "amd", "cuda": "nvidia"}.get(self.backend, "none")


def _probe_torch() -> Probe:
    try:
        import torch
    except Exception as exc:  # ImportError, or an OSError from a missing shared library
        return Probe(torch_version=None, import_error=f"{type(exc).__name__}: {exc}")
    hip = getattr(torch.version, "hip", None)
    cuda = getattr(torch.version, "cuda", None)
    backend = "hip" if hip else "cuda" if cuda else "cpu"
    runtime = hip or cuda
    if backend == "cpu":
        return Probe(torch_version=torch.__version__, backend="cpu")
    devices = []
    error = ""
    try:
        archs = tuple(torch.cuda.get_arch_list())
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            if backend == "hip":
                arch = normalize_arch(getattr(props, "gcnArchName", "") or "unknown")
            else:
                arch = f"sm_{props.major}{props.minor}"
            devices.append(Device(i, props.name, arch, round(props.total_memory / 1024**3, 1)))
    except Exception as exc:  # a driver/runtime mismatch surfaces here, not at import
        error = f"{type(exc).__name__}: {exc}"
        archs = ()
    return Probe(
        torch_version=torch.__version__,
        backend=backend,
        runtime_version=runtime,
        devices=tuple(devices),
        torch_archs=tuple(normalize_arch(a) for a in archs),
        device_error=error,
    )


def probe(ctx: Context) -> Probe:
    return ctx.memo("gpu", _probe_torch)


def gpu_skip_reason(ctx: Context) -> Optional[str]:
    """Why a GPU check cannot run here, or None when at least one GPU is usable."""
    p = probe(ctx)
    if p.torch_version is None:
        return f"torch does not import ({p.import_error})"
    if p.backend == "cpu":
        return f"no GPU: torch {p.torch_version} is a CPU-only build"
    if not p.devices:
        return f"no GPU visible to torch {p.torch_version} ({p.device_error or 'device_count() is 0'})"
    return None


def rel_err(got, ref) -> float:
    """||got - ref|| / ||ref|| in float64: the error measure of every numerical check (here, below them all)."""
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).norm() / ref.norm())
