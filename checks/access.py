"""Access checks: device nodes, the groups that own them, GPU-selecting variables, shared memory, disk for caches.

These are the failures of a container started with the wrong flags: /dev/kfd not passed, the render group's GID
differing between host and image (104/109/110 are all seen), HSA_OVERRIDE_GFX_VERSION copied from a consumer-card
guide, Docker's 64 MiB /dev/shm.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from checks import thresholds as T
from checks.build_info import image_build_info
from checks.core import FAIL, PASS, SKIP, WARN, Context, Result, check
from checks.gpu import gpu_skip_reason, probe

DEV = Path("/dev")
SHM = Path("/dev/shm")
VISIBLE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                "GPU_DEVICE_ORDINAL")


def vendor(ctx: Context) -> str:
    """"amd", "nvidia" or "none": torch's backend first, else the build info, else which device nodes exist."""
    p = probe(ctx)
    if p.vendor != "none":
        return p.vendor
    info, _ = image_build_info(ctx)
    if info is not None:
        return {"rocm": "amd", "cuda": "nvidia"}[info.vendor]
    if (DEV / "kfd").exists():
        return "amd"
    if (DEV / "nvidiactl").exists():
        return "nvidia"
    return "none"


def device_nodes(kind: str) -> list[tuple[str, Optional[Path]]]:
    """(what, path or None when absent) for the nodes GPU compute needs."""
    if kind == "amd":
        renders = sorted((DEV / "dri").glob("renderD*")) if (DEV / "dri").is_dir() else []
        return [("/dev/kfd", DEV / "kfd" if (DEV / "kfd").exists() else None)] + (
            [(str(r), r) for r in renders] or [("/dev/dri/renderD*", None)])
    if kind == "nvidia":
        gpus = sorted(p for p in DEV.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))
        fixed = [(f"/dev/{n}", DEV / n if (DEV / n).exists() else None) for n in ("nvidiactl", "nvidia-uvm")]
        return fixed + ([(str(g), g) for g in gpus] or [("/dev/nvidia[0-9]", None)])
    return []


def try_open(path: Path) -> Optional[str]:
    """None when the node opens read-write (what the runtime does), else the OS error."""
    try:
        os.close(os.open(path, os.O_RDWR))
        return None
    except OSError as exc:
        return exc.strerror or str(exc)


def credentials(ctx: Context) -> tuple[int, frozenset[int]]:
    return ctx.memo("creds", lambda: (os.geteuid(), frozenset(os.getgroups()) | {os.getegid()}))


def group_name(gid: int) -> Optional[str]:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def group_gid(name: str) -> Optional[int]:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def gpu_expected(ctx: Context) -> list[str]:
    """Why this host should have a usable GPU (empty: a CPU machine, where no GPU is a warning, not a failure).

    A CUDA build of torch alone is no evidence: PyPI's default torch is one, on laptops and CI machines too."""
    reasons = []
    if ctx.require_gpu:
        reasons.append("--require-gpu was given")
    info, _ = image_build_info(ctx)
    if info is not None:
        reasons.append(f"the image ({info.path}) was built for {info.vendor}")
    nodes = [str(DEV / n) for n in ("kfd", "nvidiactl") if (DEV / n).exists()]
    if nodes:
        reasons.append(f"GPU device nodes exist ({', '.join(nodes)})")
    return reasons


def cpu_machine(ctx: Context) -> bool:
    """No usable GPU here and none expected: the CPU demo is the only job (GPU rows skip, a small disk will do)."""
    return gpu_skip_reason(ctx) is not None and not gpu_expected(ctx)


def _no_gpu_expected(ctx: Context) -> bool:
    return not probe(ctx).devices


@check("access.devices")
def devices(ctx: Context) -> Result:
    """The device nodes GPU compute needs exist and open (ROCm: /dev/kfd, /dev/dri/renderD*; NVIDIA: /dev/nvidia*)."""
    kind = vendor(ctx)
    if kind == "none":
        return Result("access.devices", SKIP, "", "no GPU vendor: CPU-only torch, no build info, no /dev/kfd or "
                      "/dev/nvidiactl")
    nodes = device_nodes(kind)
    missing = [what for what, path in nodes if path is None]
    unopenable = [f"{what}: {err}" for what, path in nodes if path is not None and (err := try_open(path))]
    present = [what for what, path in nodes if path is not None]
    if not missing and not unopenable:
        return Result("access.devices", PASS, f"{len(present)} nodes open", ", ".join(present))
    flags = ("--device /dev/kfd --device /dev/dri" if kind == "amd" else "--gpus all (NVIDIA Container Toolkit)")
    detail = "; ".join(([f"missing {', '.join(missing)}"] if missing else []) + unopenable)
    hint = f"start the container with {flags}"
    if unopenable:
        hint += "; 'Permission denied' means a group mismatch: see access.groups"
    # torch already using the GPUs proves access works through some path this check does not know: then warn.
    status = FAIL if _no_gpu_expected(ctx) else WARN
    return Result("access.devices", status, f"{len(missing)} missing, {len(unopenable)} unopenable", detail, hint)


def _accessible(st: os.stat_result, euid: int, gids: frozenset[int]) -> bool:
    if euid == 0:
        return True
    if st.st_uid == euid:
        return st.st_mode & 0o600 == 0o600
    if st.st_gid in gids:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


@check("access.groups")
def groups(ctx: Context) -> Result:
    """The process is in the groups that own the device nodes (the render-GID-mismatch failure)."""
    kind = vendor(ctx)
    nodes = [(what, path) for what, path in device_nodes(kind) if path is not None]
    if not nodes:
        return Result("access.groups", SKIP, "", "no GPU device nodes to check")
    euid, gids = credentials(ctx)
    problems, owners = [], []
    for what, path in nodes:
        st = path.stat()
        name = group_name(st.st_gid)
        owners.append(f"{Path(what).name}:{name or '?'}({st.st_gid})")
        if _accessible(st, euid, gids):
            continue
        why = f"{what} belongs to GID {st.st_gid}"
        if name is None:
            why += " which has no name in this image's /etc/group (a host GID)"
        elif path.name.startswith("renderD") and name != "render" and group_gid("render") is not None:
            why += f" ({name}), while this image's 'render' group is GID {group_gid('render')}"
        problems.append(why)
    value = ", ".join(owners)
    in_groups = ",".join(str(g) for g in sorted(gids))
    if problems:
        needed = sorted({str(p.stat().st_gid) for _, p in nodes})
        return Result("access.groups", FAIL, value,
                      f"uid {euid} in groups {in_groups}; " + "; ".join(problems),
                      hint="add the host's GIDs to the container: "
                           + " ".join(f"--group-add {g}" for g in needed)
                           + " (on the host: getent group render video | cut -d: -f3); never hard-code the "
                             "render GID in an image")
    who = "root: group membership not needed" if euid == 0 else f"uid {euid} in groups {in_groups}"
    return Result("access.groups", PASS, value, who)


@check("access.hsa_override")
def hsa_override(ctx: Context) -> Result:
    """HSA_OVERRIDE_GFX_VERSION is unset (data-centre GPUs need none; set, it loads kernels for another GPU)."""
    value = ctx.env.get("HSA_OVERRIDE_GFX_VERSION")
    if value is None:
        return Result("access.hsa_override", PASS, "unset")
    return Result("access.hsa_override", WARN, f"HSA_OVERRIDE_GFX_VERSION={value}",
                  "ROCm will load code objects built for gfx " + value + " instead of the GPU's own; MI250 (gfx90a) "
                  "and MI300 (gfx942) need no override, and a wrong one crashes or computes garbage",
                  hint="unset HSA_OVERRIDE_GFX_VERSION (it is for consumer Radeon cards)")


@check("access.visible_devices")
def visible_devices(ctx: Context) -> Result:
    """GPU-selecting variables (CUDA/HIP/ROCR/NVIDIA_VISIBLE_DEVICES) do not hide the GPUs or contradict each other."""
    set_vars = {k: ctx.env[k] for k in VISIBLE_VARS if k in ctx.env}
    if not set_vars:
        return Result("access.visible_devices", PASS, "none set", "every GPU the container was given is visible")
    shown = ", ".join(f"{k}={v!r}" for k, v in set_vars.items())
    hiding = [k for k, v in set_vars.items() if v.strip().lower() in ("", "-1", "none", "void", "no")]
    if hiding:
        return Result("access.visible_devices", WARN, shown, f"{', '.join(hiding)} hides every GPU",
                      hint=f"unset {' '.join(hiding)} or list the GPUs to use (e.g. 0,1)")
    cuda, hip = set_vars.get("CUDA_VISIBLE_DEVICES"), set_vars.get("HIP_VISIBLE_DEVICES")
    if vendor(ctx) == "amd" and cuda is not None and hip is not None and cuda != hip:
        return Result("access.visible_devices", WARN, shown,
                      "ROCm honours both CUDA_ and HIP_VISIBLE_DEVICES; different lists select unexpected GPUs",
                      hint="set only HIP_VISIBLE_DEVICES (or ROCR_VISIBLE_DEVICES) on ROCm")
    return Result("access.visible_devices", PASS, shown)


def _gib(n: float) -> str:
    return f"{n / T.GIB:.1f} GiB" if n >= T.GIB else f"{n / 1024**2:.0f} MiB"


def filesystem_size(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@check("access.shm")
def shm(ctx: Context) -> Result:
    """/dev/shm is large enough for DataLoader workers and NCCL/RCCL (Docker's default 64 MiB is not)."""
    try:
        size = filesystem_size(SHM)
    except OSError as exc:
        return Result("access.shm", FAIL, "missing", f"{SHM}: {exc.strerror}", hint="mount a tmpfs on /dev/shm")
    hint = "run the container with --ipc=host or --shm-size=16g (compose: ipc: host or shm_size: 16gb)"
    if size < T.SHM_FAIL_BELOW:
        return Result("access.shm", FAIL, _gib(size), f"below {_gib(T.SHM_FAIL_BELOW)}: workers and NCCL fail "
                      "with 'Bus error'", hint=hint, data={"bytes": size})
    if size < T.SHM_WARN_BELOW:
        return Result("access.shm", WARN, _gib(size), f"below {_gib(T.SHM_WARN_BELOW)}: enough for one GPU, tight "
                      "for several", hint=hint, data={"bytes": size})
    return Result("access.shm", PASS, _gib(size), data={"bytes": size})


def cache_dir(env: dict[str, str]) -> Path:
    """Where model downloads land: HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface."""
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"])
    home = Path(env.get("HOME", "~")).expanduser()
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return base / "huggingface"


@check("access.disk")
def disk(ctx: Context) -> Result:
    """Free disk where model caches go (HF_HOME or ~/.cache/huggingface), against what the job here downloads."""
    path = cache_dir(ctx.env)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = free_bytes(existing)
    detail = f"{path}" + ("" if existing == path else f" (not created yet; measured on {existing})")
    data = {"free_bytes": free, "path": str(path)}
    hint = "free space there or point HF_HOME at a larger volume (mount it into the container)"
    # A CPU machine can only run the CPU demo, whose model is embedded: nothing is downloaded, so the 7B thresholds
    # would fail a machine that runs its only job fine.
    cpu_only = cpu_machine(ctx)
    fail_below = T.DISK_CPU_FAIL_BELOW if cpu_only else T.DISK_FAIL_BELOW
    if free < fail_below:
        return Result("access.disk", FAIL, f"{_gib(free)} free", detail + f"; below {_gib(fail_below)}",
                      hint=hint, data=data)
    if cpu_only and free < T.DISK_FAIL_BELOW:
        return Result("access.disk", WARN, f"{_gib(free)} free", detail + f"; enough for the CPU demo (embedded "
                      f"model, no download), below the {_gib(T.DISK_FAIL_BELOW)} a 7B model's download needs",
                      hint=f"fine for the CPU demo; on a GPU node, {hint}", data=data)
    if free < T.DISK_WARN_BELOW:
        return Result("access.disk", WARN, f"{_gib(free)} free", detail + f"; below {_gib(T.DISK_WARN_BELOW)}",
                      hint=hint, data=data)
    return Result("access.disk", PASS, f"{_gib(free)} free", detail, data=data)
