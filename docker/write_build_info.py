"""Write the image's build-info file (/etc/clinical-finetune-kit/build.json), read by `python -m checks`.

Run at build time in the GPU images' runtime stage, after torch and the extension wheels are installed, so the
file records what is really in the image (torch's own version string, the installed flash-attn and bitsandbytes),
not what the build arguments asked for. The format is checks/build_info.py's (schema 1).
    python write_build_info.py --vendor rocm --gpu-archs "gfx90a;gfx942" --image "..." [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

DEFAULT_OUTPUT = Path("/etc/clinical-finetune-kit/build.json")


def installed_version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def rocm_version(rocm_path: Path) -> Optional[str]:
    # /opt/rocm/.info/version holds e.g. "6.1.2-119"; the part before the dash is the release.
    info = rocm_path / ".info" / "version"
    return info.read_text().strip().split("-")[0] if info.is_file() else None


def build_info(vendor: str, gpu_archs: list[str], image: str, rocm_path: Path) -> dict[str, Any]:
    import torch  # imported here: the tests of this module run without torch's GPU builds

    info: dict[str, Any] = {
        "schema": 1,
        "vendor": vendor,
        "torch_version": torch.__version__,
        "gpu_archs": gpu_archs,
        "flash_attn_version": installed_version("flash_attn") or installed_version("flash-attn"),
        "bitsandbytes_version": installed_version("bitsandbytes"),
        "image": image,
        "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if vendor == "rocm":
        info["rocm_version"] = rocm_version(rocm_path)
        if info["rocm_version"] is None:
            raise SystemExit(f"write_build_info: no ROCm release under {rocm_path}/.info/version")
        info["hip_version"] = getattr(torch.version, "hip", None)
    else:
        info["cuda_version"] = getattr(torch.version, "cuda", None)
        if info["cuda_version"] is None:
            raise SystemExit(f"write_build_info: torch {torch.__version__} is not a CUDA build")
    # Optional keys that are unknown are left out rather than written as null (the checks' schema wants strings).
    return {key: value for key, value in info.items() if value is not None}


def write_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".build-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", choices=["rocm", "cuda"], required=True)
    parser.add_argument("--gpu-archs", required=True, help='";"- or ","-separated, e.g. "gfx90a;gfx942" or "8.0;9.0"')
    parser.add_argument("--image", default="")
    parser.add_argument("--rocm-path", type=Path, default=Path(os.environ.get("ROCM_PATH", "/opt/rocm")))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    archs = [arch.strip() for arch in args.gpu_archs.replace(",", ";").split(";") if arch.strip()]
    if not archs:
        parser.error("--gpu-archs names no architecture")
    payload = build_info(args.vendor, archs, args.image, args.rocm_path)
    write_atomically(args.output, payload)
    print(json.dumps(payload, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
