"""The image's build-info file: what the image was built with, which the platform checks compare against.

The images write it at build time to ``/etc/clinical-finetune-kit/build.json`` (the env var ``KIT_BUILD_INFO``
names another path). It is one JSON object::

    {
      "schema": 1,                          # int, required: this format's version
      "vendor": "rocm",                     # "rocm" or "cuda", required
      "torch_version": "2.4.1+rocm6.1",     # torch.__version__ as printed in the image, required
      "gpu_archs": ["gfx90a", "gfx942"],    # what the compiled extensions (flash-attn, bitsandbytes) target,
                                            #   required: gfx names on ROCm (ROCM_GPU_ARCHS), and
                                            #   CUDA_ARCH_LIST entries on CUDA ("8.0", "9.0", "9.0+PTX")
      "rocm_version": "6.1.2",              # ROCm only, required there: /opt/rocm/.info/version at build time
      "hip_version": "6.1.40091",           # ROCm only, optional: torch.version.hip (torch's bundled HIP)
      "cuda_version": "12.1",               # CUDA only, required there: torch.version.cuda
      "flash_attn_version": "2.6.3",        # optional: the flash-attn distribution's version; null = not built
      "bitsandbytes_version": "0.48.2",     # optional: the bitsandbytes distribution's version; null = none
      "image": "clinical-finetune-kit:rocm",# optional, free text: tag, base image digest, git commit...
      "built_at": "2026-11-28T23:00:00Z"    # optional, free text
    }

Other keys are kept (``extra``) and shown, not compared, so an image may record more without breaking the checks.
A missing file means "not inside a kit image": the pin comparison is skipped and says so. A file that exists but
does not parse, or lacks a required key, is an error naming the file and the key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from checks.core import Context

DEFAULT_PATH = Path("/etc/clinical-finetune-kit/build.json")
# Where a vendor's image build takes its GPU targets from: keys of stack.env (the kit's versions file), named in
# the fix hints; tests/checks/test_stack.py keeps them existing there.
STACK_ARCH_KEYS = {"rocm": "ROCM_GPU_ARCHS", "cuda": "CUDA_ARCH_LIST"}
ENV_VAR = "KIT_BUILD_INFO"
SCHEMA = 1

_REQUIRED = {"schema": int, "vendor": str, "torch_version": str, "gpu_archs": list}
_OPTIONAL = {
    "rocm_version": str,
    "hip_version": str,
    "cuda_version": str,
    "flash_attn_version": str,
    "bitsandbytes_version": str,
    "image": str,
    "built_at": str,
}


class BuildInfoError(ValueError):
    """The build-info file exists but is not valid; the message names the file and key."""


@dataclass(frozen=True)
class BuildInfo:
    path: Path
    vendor: str
    torch_version: str
    gpu_archs: tuple[str, ...]
    rocm_version: Optional[str] = None
    hip_version: Optional[str] = None
    cuda_version: Optional[str] = None
    flash_attn_version: Optional[str] = None
    bitsandbytes_version: Optional[str] = None
    image: Optional[str] = None
    built_at: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def build_info_path(env: Optional[Mapping[str, str]] = None) -> tuple[Path, bool]:
    """The path to read and whether the user named it explicitly (then a missing file is an error)."""
    env = os.environ if env is None else env
    named = env.get(ENV_VAR, "").strip()
    return (Path(named), True) if named else (DEFAULT_PATH, False)


def load_build_info(path: Path) -> BuildInfo:
    """Parse and validate the file at ``path`` (which must exist)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BuildInfoError(f"{path}: cannot read build info: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise BuildInfoError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise BuildInfoError(f"{path}: expected a JSON object at the top level, got {type(raw).__name__}")
    for key, typ in _REQUIRED.items():
        if key not in raw:
            raise BuildInfoError(f"{path}: missing required key {key!r} (required: {', '.join(_REQUIRED)})")
        if not isinstance(raw[key], typ) or isinstance(raw[key], bool):
            raise BuildInfoError(f"{path}: key {key!r} must be a {typ.__name__}, got {raw[key]!r}")
    for key, typ in _OPTIONAL.items():
        if raw.get(key) is not None and not isinstance(raw[key], typ):
            raise BuildInfoError(f"{path}: key {key!r} must be a {typ.__name__} or null, got {raw[key]!r}")
    if raw["schema"] != SCHEMA:
        raise BuildInfoError(f"{path}: key 'schema' is {raw['schema']}, this checks package reads schema {SCHEMA}")
    vendor = raw["vendor"]
    if vendor not in ("rocm", "cuda"):
        raise BuildInfoError(f"{path}: key 'vendor' must be 'rocm' or 'cuda', got {vendor!r}")
    archs = raw["gpu_archs"]
    if not archs or not all(isinstance(a, str) and a.strip() for a in archs):
        raise BuildInfoError(f"{path}: key 'gpu_archs' must be a non-empty list of strings, got {archs!r}")
    runtime_key = "rocm_version" if vendor == "rocm" else "cuda_version"
    if not raw.get(runtime_key):
        raise BuildInfoError(f"{path}: vendor {vendor!r} needs key {runtime_key!r}")
    known = set(_REQUIRED) | set(_OPTIONAL)
    return BuildInfo(
        path=path,
        vendor=vendor,
        torch_version=raw["torch_version"],
        gpu_archs=tuple(a.strip() for a in archs),
        extra={k: v for k, v in raw.items() if k not in known},
        **{k: raw.get(k) for k in _OPTIONAL},
    )


def image_build_info(ctx: Context) -> tuple[Optional[BuildInfo], str]:
    """This run's build info, loaded once: (info, "") for a valid file, (None, why) otherwise. Raises nothing.

    Platform, access and numerics checks all ask; the memo lives here, beside the loader, so that none of them
    imports another check module to get it.
    """

    def load() -> tuple[Optional[BuildInfo], str]:
        path, named = build_info_path(ctx.env)
        if not path.exists():
            why = f"no build info at {path}"
            return None, (why + " (named by KIT_BUILD_INFO)" if named else why)
        try:
            return load_build_info(path), ""
        except BuildInfoError as exc:
            return None, str(exc)

    return ctx.memo("build_info", load)


def normalize_arch(arch: str) -> str:
    """One spelling per arch: "gfx90a:sramecc+:xnack-" -> "gfx90a"; "9.0", "9.0+PTX", "90", "sm_90" -> "sm_90"."""
    arch = arch.strip().lower()
    if arch.startswith("gfx"):
        return arch.split(":", 1)[0]
    arch = arch.removesuffix("+ptx")
    if arch.startswith(("sm_", "compute_")):
        return "sm_" + arch.split("_", 1)[1]
    if "." in arch:
        major, minor = arch.split(".", 1)
        return f"sm_{major}{minor}"
    return f"sm_{arch}" if arch.isdigit() else arch
