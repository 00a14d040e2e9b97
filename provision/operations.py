"""Custom pyinfra operations for the checks and the one Docker setting pyinfra has no operation for.

The verification operations read their facts while the run executes (pyinfra regenerates an operation's
commands at execution time), so they see the host after the driver went in, not before. A passing check yields
no command, so it counts as "no change" and a second run stays clean; a failing check yields a command that
prints what was wrong and exits 1, which pyinfra reports as a failed operation on that host.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Sequence

from pyinfra import host, state
from pyinfra.api import operation
from pyinfra.api.operation import OperationMeta

from provision.facts import (
    APT_UPDATE_STAMP,
    AptListsState,
    DockerImageId,
    DockerRuntimes,
    GroupGid,
    KitChecks,
    NvidiaGpus,
    RocmGpus,
)

FAILURE_TAIL_LINES = 30


def _fail(message: str) -> str:
    return f"echo {shlex.quote(message)} >&2; exit 1"


def gpu_problems(found: Sequence[str], expected_count: int | None, expected_archs: Sequence[str]) -> list[str]:
    """What is wrong with the GPUs found (architectures or compute capabilities, one entry per GPU)."""
    problems = []
    if not found:
        problems.append("no GPU found")
    if expected_count is not None and len(found) != expected_count:
        problems.append(f"expected {expected_count} GPUs, found {len(found)}")
    unexpected = sorted(set(found) - set(expected_archs)) if expected_archs else []
    if unexpected:
        problems.append(f"unexpected architecture(s) {', '.join(unexpected)} (expected {', '.join(expected_archs)})")
    return problems


@operation(is_idempotent=False)
def apt_lists_current(sources: Sequence[OperationMeta] = (), cache_time: int = 3600) -> Iterator[str]:
    """
    Refresh apt's package lists when a source, key or pin changed, or they are older than cache_time.

    + sources: the operations that wrote sources/keys/pins in this run; a change in any forces the refresh
    + cache_time: seconds a successful refresh counts as current

    --error-on=any: a repository that cannot be fetched fails the run here, naming it, instead of apt warning
    and carrying on with old lists (which later shows up as "Unable to locate package").
    """
    if state.is_executing:
        changed = any(source.did_change() for source in sources)
    else:
        changed = any(source.will_change for source in sources)
    reason = "sources changed in this run" if changed else host.get_fact(AptListsState, cache_time=cache_time)
    if not reason:
        host.noop("apt package lists are current")
        return
    yield "apt-get update --error-on=any"
    yield f"touch {APT_UPDATE_STAMP}"  # Debian's apt does not keep this stamp itself; Ubuntu's does


@operation(is_idempotent=True)
def gpus_match(platform: str, expected_count: int | None = None, expected_archs: Sequence[str] = ()) -> Iterator[str]:
    """
    Fail unless the host's GPUs are what its group promises.

    + platform: "rocm" (reads rocminfo; an MI250 card shows as two GPUs, one per GCD) or "cuda" (nvidia-smi)
    + expected_count: number of GPUs (ROCm: agents), or None to accept any number above zero
    + expected_archs: allowed gfx names (ROCm) or compute capabilities such as "9.0" (CUDA); empty accepts any
    """
    if not state.is_executing:
        host.noop("GPUs are read when the run executes, after the driver is in place")
        return
    if platform == "rocm":
        found = host.get_fact(RocmGpus)
    else:
        found = [gpu["compute_cap"] for gpu in host.get_fact(NvidiaGpus)]
    problems = gpu_problems(found, expected_count, expected_archs)
    if problems:
        yield _fail(f"GPU check failed: {'; '.join(problems)}. Found: {found or 'nothing'}")
    else:
        host.noop(f"{len(found)} GPU(s): {', '.join(sorted(set(found)))}")


@operation()
def docker_nvidia_runtime() -> Iterator[str]:
    """
    Register the NVIDIA runtime with Docker through NVIDIA's own tool, once.

    nvidia-ctk rewrites /etc/docker/daemon.json every time it runs, so it is only run when the runtime is missing.
    """
    runtimes = host.get_fact(DockerRuntimes)
    if "nvidia" in runtimes:
        host.noop("Docker already has the nvidia runtime")
        return
    yield "nvidia-ctk runtime configure --runtime=docker"


@operation()
def docker_image_pulled(image: str) -> Iterator[str]:
    """
    Pull an image unless it is already present.

    + image: name:tag
    """
    if host.get_fact(DockerImageId, image=image):
        host.noop(f"image {image} is present")
        return
    yield f"docker pull {shlex.quote(image)}"


def gpu_docker_args(platform: str, render_gid: int | None) -> list[str]:
    """`docker run` flags that give a container the host's GPUs."""
    # Multi-GPU collectives (NCCL/RCCL) share memory through /dev/shm; Docker's default 64 MB is too small.
    shared = ["--ipc", "host"]
    if platform == "cuda":
        return ["--gpus", "all", *shared]
    # ROCm: the compute device and the render nodes, plus the groups that own them on this host. The render group
    # must be given as a number: the image has no group of that name, or one with another id. AMD's container
    # instructions also lift the seccomp profile, which blocks memory-policy calls the ROCm runtime makes.
    gid = str(render_gid) if render_gid is not None else "$(getent group render | cut -d: -f3)"
    return [
        "--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video", "--group-add", gid,
        "--security-opt", "seccomp=unconfined", *shared,
    ]  # fmt: skip


@operation(is_idempotent=True)
def kit_checks_pass(image: str, platform: str, checks_command: str) -> Iterator[str]:
    """
    Fail unless the kit's smoke checks pass inside its image, with the host's GPUs attached.

    + image: the kit image (name:tag)
    + platform: "rocm" or "cuda", which decides the GPU flags
    + checks_command: the command run in the container; exit status 0 means every check passed
    """
    if not state.is_executing:
        host.noop(f"checks run in {image} when the run executes")
        return
    render_gid = host.get_fact(GroupGid, group="render") if platform == "rocm" else None
    result = host.get_fact(
        KitChecks, image=image, docker_args=gpu_docker_args(platform, render_gid), checks_command=checks_command
    )
    if result["exit_code"] == 0:
        host.noop(f"checks passed in {image}")
        return
    tail = "\n".join(result["output"][-FAILURE_TAIL_LINES:])
    yield _fail(f"checks failed in {image} (exit {result['exit_code']}):\n{tail}")
