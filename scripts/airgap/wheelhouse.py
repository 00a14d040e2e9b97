"""`make wheelhouse`: on a connected machine, gather everything an image build downloads, with checksums.

    python scripts/airgap/wheelhouse.py --vendor cpu [--vendor rocm ...] --output dist/wheelhouse

Into OUTPUT:
  wheels/    every wheel of the vendor's locks (requirements/image-<vendor>*.lock, image-demo.lock, and
             image-build.lock for the GPU images), fetched by `pip download --require-hashes`: pip refuses any file
             whose sha256 is not the lock's, so the folder holds exactly what the lock names. ROCm with
             ROCM_TORCH=prebuilt also gets torch and pytorch-triton-rocm at stack.env's exact versions from
             ROCM_TORCH_INDEX_URL (their hashes belong in requirements/image-rocm-torch-index.txt, placeholders until
             filled; SHA256SUMS records what was fetched).
  sources/   the source archives the GPU builds compile: FlashAttention, bitsandbytes and (ROCM_TORCH=source) PyTorch
             with all its submodules, at the commits pinned in
             stack.env (ROCm: a shallow fetch of that one commit with its submodules, packed as a deterministic
             tar.gz: sorted names, zero times and owners, so the same commit always gives the same sha256), and the
             CUDA FlashAttention sdist checked against CUDA_FLASH_ATTN_SHA256. Named as source_files() says: the
             GPU Dockerfiles read those names (tests/images/test_wheelhouse_build.py holds them to it).
  SHA256SUMS every file above (`sha256sum -c SHA256SUMS` on the air-gapped side), and wheelhouse.json: the vendors,
             Python versions, the locks' sha256 and each source's repo, ref and sha256.
The image builds take OUTPUT as a build context, install with `pip --no-index` and unpack sources/ with
docker/wheelhouse-source.sh (make image-VENDOR WHEELHOUSE=dist/wheelhouse; docs/airgap.md).
Writes go to OUTPUT.tmp, renamed into place at the end.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from kit.digest import sha256_file  # noqa: E402
from kit.stack import read_stack  # noqa: E402  (the script runs from a checkout, not an installed package)

# The images' Python, by vendor: Debian 12 (CPU) has 3.11, Ubuntu 22.04 (ROCm/CUDA runtime bases) 3.10.
PYTHON_VERSION = {"cpu": "3.11", "rocm": "3.10", "cuda": "3.10"}
# pip takes --platform tags literally: every manylinux tag the images' glibc (2.35 Ubuntu 22.04, 2.36 Debian 12) runs.
PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)) + (
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64")


class WheelhouseError(RuntimeError):
    pass


def locks_for(vendor: str, requirements: Path) -> list[Path]:
    names = [f"image-{vendor}-torch.lock", f"image-{vendor}.lock", "image-demo.lock"]
    if vendor != "cpu":
        names.append("image-build.lock")
    if vendor == "rocm":
        names.append("image-rocm-torch-build.lock")  # small (numpy, pyyaml): kept for either ROCM_TORCH position
    return [requirements / name for name in names]


def rocm_torch(stack: dict[str, str]) -> str:
    """stack.env's ROCm torch switch: ``source`` (compiled from ROCM_TORCH_REF) or ``prebuilt`` (PyTorch's wheel).
    A stack without the key is one from before the switch existed: prebuilt was then the only position."""
    mode = stack.get("ROCM_TORCH", "prebuilt")
    if mode not in ("source", "prebuilt"):
        raise WheelhouseError(f"stack.env: ROCM_TORCH must be source or prebuilt, got {mode!r}")
    return mode


def _pip_download(args: list[str], dest: Path, python_version: str, what: str) -> None:
    """``pip download`` of binary wheels for the image's platform and Python into ``dest``."""
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest),
           "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    result = subprocess.run(cmd + args, capture_output=True, text=True)
    if result.returncode:
        raise WheelhouseError(f"pip download {what} failed:\n{result.stderr.strip()[-2000:]}")


def download_lock(lock: Path, dest: Path, python_version: str, index_url: Optional[str]) -> None:
    """Every file of one lock for the image's platform and Python, hash-checked by pip."""
    args = ["--require-hashes", "-r", str(lock)] + (["--extra-index-url", index_url] if index_url else [])
    _pip_download(args, dest, python_version, f"-r {lock}")


def exact_pins(vendor: str, stack: dict[str, str]) -> list[str]:
    """Wheels a vendor's image installs by exact version from its own index, outside any lock (ROCm's torch)."""
    if vendor == "rocm" and rocm_torch(stack) == "prebuilt":
        version = stack.get("ROCM_TORCH_PREBUILT_VERSION", stack["ROCM_TORCH_VERSION"])
        return [f"torch=={version}", f"pytorch-triton-rocm=={stack['ROCM_TRITON_VERSION']}"]
    return []  # ROCM_TORCH=source: torch is compiled from its source archive (source_files)


def download_exact(pins: list[str], dest: Path, python_version: str, index_url: str) -> None:
    """``pins`` from ``index_url`` only (a local version such as +rocm6.1 exists nowhere else)."""
    _pip_download(["--index-url", index_url, *pins], dest, python_version, f"{' '.join(pins)} from {index_url}")


def _git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise WheelhouseError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()


def deterministic_tar_gz(tree: Path, dest: Path, prefix: str) -> None:
    """Pack ``tree`` (minus .git) so that the same files always give the same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(p for p in tree.rglob("*") if ".git" not in p.relative_to(tree).parts)
        for path in paths:
            info = tar.gettarinfo(str(path), arcname=f"{prefix}/{path.relative_to(tree).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if (path.is_dir() or os.access(path, os.X_OK)) else 0o644
            if info.isreg():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buffer.getvalue())


def git_archive_name(name: str, commit: str) -> str:
    """sources/ file of one commit; the archive's top folder is this name without .tar.gz."""
    return f"{name}-{commit}.tar.gz"


def url_file_name(url: str) -> str:
    """sources/ file of a download: the URL's last part (an sdist's top folder is that name without .tar.gz)."""
    return url.rsplit("/", 1)[-1]


def source_files(vendor: str, stack: dict[str, str]) -> list[str]:
    """The sources/ names sources_for() writes for this stack (refs in stack.env are full commits)."""
    if vendor == "rocm":
        torch = [git_archive_name("pytorch", stack["ROCM_TORCH_REF"])] if rocm_torch(stack) == "source" else []
        return [git_archive_name("flash-attention", stack["ROCM_FLASH_ATTN_REF"]),
                git_archive_name("bitsandbytes", stack["ROCM_BNB_REF"])] + torch
    if vendor == "cuda":
        return [url_file_name(stack["CUDA_FLASH_ATTN_URL"])]
    return []


def archive_git_ref(repo: str, ref: str, dest_dir: Path, name: str) -> dict[str, Any]:
    """One commit (and its submodules, recursively) of ``repo`` as ``dest_dir/<name>-<ref>.tar.gz``."""
    with tempfile.TemporaryDirectory(prefix="wheelhouse-git-") as tmp:
        tree = Path(tmp) / "src"
        tree.mkdir()
        _git("init", "-q", cwd=tree)
        _git("fetch", "--quiet", "--depth", "1", repo, ref, cwd=tree)
        _git("checkout", "--quiet", "FETCH_HEAD", cwd=tree)
        head = _git("rev-parse", "HEAD", cwd=tree)
        if len(ref) == 40 and head != ref:
            raise WheelhouseError(f"{repo}: asked for {ref}, fetched {head}")
        # file:// submodules (the tests' stand-in for GitHub) need this git >= 2.38 default relaxed.
        _git("-c", "protocol.file.allow=always", "submodule", "update", "--quiet", "--init", "--recursive",
             "--depth", "1", cwd=tree)
        dest = dest_dir / git_archive_name(name, head)
        deterministic_tar_gz(tree, dest, dest.name.removesuffix(".tar.gz"))
    return {"repo": repo, "ref": ref, "commit": head, "file": f"sources/{dest.name}", "sha256": sha256_file(dest)}


def download_checked(url: str, sha256: str, dest_dir: Path) -> dict[str, Any]:
    dest = dest_dir / url_file_name(url)
    with urllib.request.urlopen(url, timeout=120) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)
    actual = sha256_file(dest)
    if actual != sha256:
        dest.unlink()
        raise WheelhouseError(f"{url}: sha256 {actual}, stack.env expects {sha256}")
    return {"url": url, "file": f"sources/{dest.name}", "sha256": actual}


def sources_for(vendor: str, stack: dict[str, str], dest_dir: Path) -> list[dict[str, Any]]:
    if vendor == "rocm":
        torch = ([archive_git_ref(stack["ROCM_TORCH_REPO"], stack["ROCM_TORCH_REF"], dest_dir, "pytorch")]
                 if rocm_torch(stack) == "source" else [])
        return [archive_git_ref(stack["ROCM_FLASH_ATTN_REPO"], stack["ROCM_FLASH_ATTN_REF"], dest_dir,
                                "flash-attention"),
                archive_git_ref(stack["ROCM_BNB_REPO"], stack["ROCM_BNB_REF"], dest_dir, "bitsandbytes")] + torch
    if vendor == "cuda":
        return [download_checked(stack["CUDA_FLASH_ATTN_URL"], stack["CUDA_FLASH_ATTN_SHA256"], dest_dir)]
    return []


def write_sums(root: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("SHA256SUMS", "wheelhouse.json"))
    lines = "".join(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files)
    (root / "SHA256SUMS").write_text(lines)


def build(vendors: list[str], output: Path, stack: dict[str, str], requirements: Path,
          python_version: Optional[str] = None, with_locks: bool = True) -> dict[str, Any]:
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wheels").mkdir(parents=True)
    (tmp / "sources").mkdir()
    record: dict[str, Any] = {"vendors": {}}
    for vendor in vendors:
        py = python_version or PYTHON_VERSION[vendor]
        locks = locks_for(vendor, requirements) if with_locks else []
        for lock in locks:
            index = stack.get(f"{vendor.upper()}_TORCH_INDEX_URL") if lock.name.endswith("-torch.lock") else None
            download_lock(lock, tmp / "wheels", py, index)
        if with_locks and exact_pins(vendor, stack):
            download_exact(exact_pins(vendor, stack), tmp / "wheels", py, stack[f"{vendor.upper()}_TORCH_INDEX_URL"])
        record["vendors"][vendor] = {"python": py, "locks": {lock.name: sha256_file(lock) for lock in locks},
                                     "sources": sources_for(vendor, stack, tmp / "sources")}
    write_sums(tmp)
    (tmp / "wheelhouse.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    tmp.rename(output)
    return record


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="wheelhouse.py", description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", action="append", choices=sorted(PYTHON_VERSION), required=True)
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "wheelhouse")
    parser.add_argument("--stack", type=Path, default=ROOT / "stack.env")
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements")
    parser.add_argument("--python-version", help="override the image's Python (default: by vendor)")
    parser.add_argument("--sources-only", action="store_true", help="only the source archives (no pip download)")
    args = parser.parse_args(argv)
    try:
        record = build(args.vendor, args.output, read_stack(args.stack), args.requirements, args.python_version,
                       with_locks=not args.sources_only)
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    count = sum(1 for _ in (args.output / "wheels").iterdir())
    print(f"wheelhouse: {count} wheels, {sum(len(v['sources']) for v in record['vendors'].values())} source archives "
          f"-> {args.output} (check with: cd {args.output} && sha256sum -c SHA256SUMS)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
