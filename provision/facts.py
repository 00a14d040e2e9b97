"""Custom pyinfra facts: what the GPUs, groups, Docker images and the kit's checks look like on a host.

Every command here exits 0 whatever it finds (missing tools or files read as "nothing there"), so a fact never
aborts a run on a fresh host; the operations in provision/operations.py decide what is an error.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from pyinfra.api import FactBase

EXIT_MARKER = "##clinical-kit-exit="
# AMD installs its tools under /opt/rocm/bin, which is not on the PATH of a non-login shell (how pyinfra runs
# commands): call them by full path.
ROCMINFO = "/opt/rocm/bin/rocminfo"
APT_UPDATE_STAMP = "/var/lib/apt/periodic/update-success-stamp"
APT_CONFIG_DIRS = ("/etc/apt/sources.list", "/etc/apt/sources.list.d", "/etc/apt/keyrings", "/etc/apt/preferences.d")


def parse_rocminfo(lines: list[str]) -> list[str]:
    """gfx names of the GPU agents in `rocminfo` output, one per agent (an MI250 shows two: one per GCD)."""
    archs: list[str] = []
    name: str | None = None
    for line in lines:
        if re.match(r"^\s*Agent \d+\s*$", line):
            name = None
            continue
        match = re.match(r"^\s*Name:\s+(\S+)", line)
        if match and name is None:
            name = match.group(1)  # the first Name: of an agent block is its ISA/CPU name
            continue
        if re.match(r"^\s*Device Type:\s+GPU\b", line) and name is not None:
            archs.append(name)
    return archs


class RocmGpus(FactBase[list]):
    """gfx architecture of each GPU agent that `rocminfo` reports, e.g. ["gfx942"] * 8; [] without ROCm."""

    def requires_command(self, *args, **kwargs) -> str:
        return ROCMINFO

    def command(self) -> str:
        return f"{ROCMINFO} 2>/dev/null || true"

    @staticmethod
    def default() -> list:
        return []

    def process(self, output: list[str]) -> list:
        return parse_rocminfo(output)


class NvidiaGpus(FactBase[list]):
    """One dict per GPU from nvidia-smi: index, name and compute capability (e.g. "9.0"); [] without a driver."""

    def requires_command(self, *args, **kwargs) -> str:
        return "nvidia-smi"

    def command(self) -> str:
        return "nvidia-smi --query-gpu=index,name,compute_cap --format=csv,noheader 2>/dev/null || true"

    @staticmethod
    def default() -> list:
        return []

    def process(self, output: list[str]) -> list:
        gpus = []
        for line in output:
            fields = [field.strip() for field in line.split(",")]
            if len(fields) == 3 and fields[0].isdigit():
                gpus.append({"index": int(fields[0]), "name": fields[1], "compute_cap": fields[2]})
        return gpus


class GroupGid(FactBase):
    """Numeric id of a group, or None. The render group's id differs between hosts (104, 109, 110 are all seen),
    so containers must be given the number, not the name."""

    def command(self, group: str) -> str:
        return f"getent group {shlex.quote(group)} || true"

    def process(self, output: list[str]) -> int | None:
        for line in output:
            fields = line.split(":")
            if len(fields) >= 3 and fields[2].isdigit():
                return int(fields[2])
        return None


class DockerImageId(FactBase):
    """Id of a local Docker image, or None when it is not present (or Docker is not installed/running)."""

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, image: str) -> str:
        return f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(image)} 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        ids = [line.strip() for line in output if line.strip().startswith("sha256:")]
        return ids[0] if ids else None


class DockerRuntimes(FactBase[list]):
    """Names of the runtimes registered in /etc/docker/daemon.json ([] when the file is absent)."""

    def command(self) -> str:
        return "cat /etc/docker/daemon.json 2>/dev/null || true"

    @staticmethod
    def default() -> list:
        return []

    def process(self, output: list[str]) -> list:
        text = "\n".join(output).strip()
        if not text:
            return []
        try:
            config = json.loads(text)
        except json.JSONDecodeError:
            return ["<unparsable /etc/docker/daemon.json>"]
        runtimes = config.get("runtimes", {}) if isinstance(config, dict) else {}
        return sorted(runtimes) if isinstance(runtimes, dict) else []


class KitChecks(FactBase[dict]):
    """Runs the kit's smoke checks in a throw-away container (`docker run --rm`) and reports exit code and output.

    A fact rather than an operation so that a passing run counts as "no change": the container leaves nothing
    behind on the host.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, image: str, docker_args: list[str], checks_command: str) -> str:
        args = " ".join(shlex.quote(arg) if not arg.startswith("$(") else arg for arg in docker_args)
        return (
            # --pull never: check the image this run pulled or loaded, never a registry's newer one.
            f"docker run --rm --pull never --network host {args} {shlex.quote(image)} {checks_command} 2>&1; "
            f'echo "{EXIT_MARKER}$?"'
        )

    @staticmethod
    def default() -> dict:
        return {"exit_code": None, "output": [], "report": None}

    def process(self, output: list[str]) -> dict:
        exit_code = None
        lines = []
        for line in output:
            if line.startswith(EXIT_MARKER):
                exit_code = int(line[len(EXIT_MARKER) :])
            else:
                lines.append(line)
        report: Any = None
        try:
            report = json.loads("\n".join(lines))
        except json.JSONDecodeError:
            pass  # the checks printed something besides their JSON (e.g. an error from docker itself)
        return {"exit_code": exit_code, "output": lines, "report": report}


class CpuVendorId(FactBase):
    """vendor_id of the host's first CPU from /proc/cpuinfo ("AuthenticAMD", "GenuineIntel"), or "" (a chroot)."""

    def command(self) -> str:
        return "grep -m1 '^vendor_id' /proc/cpuinfo 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        for line in output:
            if ":" in line:
                return line.split(":", 1)[1].strip()
        return ""


class UrlStatus(FactBase):
    """Whether the host itself can fetch a URL: "ok", or what went wrong (curl's message, an HTTP status).

    A HEAD request (curl --head), so nothing is downloaded; file:/ URLs are checked with test -r. Run from the
    target because the target, not the control machine, talks to the repositories (proxies, firewalls, mirrors).
    """

    def command(self, url: str, timeout: int) -> str:
        quoted = shlex.quote(url)
        if url.startswith("file:"):
            path = shlex.quote("/" + url.split(":", 1)[1].lstrip("/"))
            return f"if test -r {path}; then echo ok; else echo 'not readable on the host'; fi"
        return (
            "if ! command -v curl >/dev/null; then echo 'curl is not installed on the host'; "
            f"elif out=$(curl --head --silent --show-error --fail --location --max-time {int(timeout)} "
            f'-o /dev/null {quoted} 2>&1); then echo ok; else echo "$out"; fi'
        )

    @staticmethod
    def default() -> str:
        return "no answer"

    def process(self, output: list[str]) -> str:
        text = " ".join(line.strip() for line in output if line.strip())
        return text or "no answer"


class AptListsState(FactBase):
    """Why apt's package lists need a refresh ("missing", "sources changed", "older than N s"), or "" if fresh.

    The lists are stale when any source, key or pin file is newer than the last successful `apt-get update`
    (a run that failed half-way, or a file fixed by hand) or when they are older than cache_time.
    """

    def command(self, cache_time: int) -> str:
        dirs = " ".join(APT_CONFIG_DIRS)
        return (
            f"stamp={APT_UPDATE_STAMP}; "
            'if [ ! -e "$stamp" ]; then echo missing; '
            f'elif [ -n "$(find {dirs} -newer "$stamp" 2>/dev/null | head -n1)" ]; then echo sources changed; '
            f'elif [ $(( $(date +%s) - $(stat -c %Y "$stamp") )) -ge {int(cache_time)} ]; '
            f"then echo older than {int(cache_time)} s; fi"
        )

    def process(self, output: list[str]) -> str:
        return " ".join(line.strip() for line in output).strip()


class UrlSha256(FactBase):
    """sha256 of what a URL serves now, fetched on the host (signing keys are a few kB), or None if unreachable."""

    def command(self, url: str) -> str:
        return f"curl --silent --fail --location --max-time 30 {shlex.quote(url)} | sha256sum || true"

    def process(self, output: list[str]) -> str | None:
        digest = output[0].split()[0] if output and output[0].split() else ""
        # sha256 of nothing: curl failed (the URL check before any change has already named such a URL).
        empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        return digest if len(digest) == 64 and digest != empty else None


# PCI vendor IDs of the GPU makers this kit provisions (the PCI-SIG's assignments; lspci -nn shows the same).
PCI_GPU_VENDORS = {"0x1002": "AMD", "0x10de": "NVIDIA"}
# PCI base classes a GPU reports: 0x03 display controller (MI250: 0x0380, H100: 0x0302) and 0x12 processing
# accelerator (MI300X: 0x1200). Other devices of the same vendor (AMD's CPU side is 0x1022 anyway) are left out.
PCI_GPU_CLASSES = ("0x03", "0x12")
SYSFS_PCI_DEVICES = "/sys/bus/pci/devices"


class PciGpus(FactBase[list]):
    """GPUs on the host's PCI bus, from sysfs, before any driver is installed: one dict per device with its
    address, vendor ("AMD", "NVIDIA" or the raw ID) and vendor:device IDs. [] where sysfs shows none (a chroot)."""

    def command(self) -> str:
        return (
            f"for dev in {SYSFS_PCI_DEVICES}/*; do "
            '[ -r "$dev/class" ] && [ -r "$dev/vendor" ] || continue; '
            'echo "${dev##*/} $(cat "$dev/class") $(cat "$dev/vendor") $(cat "$dev/device" 2>/dev/null)"; '
            "done 2>/dev/null || true"
        )

    @staticmethod
    def default() -> list:
        return []

    def process(self, output: list[str]) -> list:
        gpus = []
        for line in output:
            fields = line.split()
            if len(fields) < 3 or not fields[1].lower().startswith(PCI_GPU_CLASSES):
                continue
            vendor_id = fields[2].lower()
            device_id = fields[3].lower() if len(fields) > 3 else "?"
            gpus.append({
                "address": fields[0],
                "vendor": PCI_GPU_VENDORS.get(vendor_id, vendor_id),
                "ids": f"{vendor_id.removeprefix('0x')}:{device_id.removeprefix('0x')}",
            })  # fmt: skip
        return gpus


class Privilege(FactBase[dict]):
    """Who the run's commands execute as (uid, user) and whether `sudo -n` would work for that user.

    With pyinfra's --sudo the fact itself runs through sudo, so a working sudo shows as uid 0."""

    def command(self) -> str:
        return (
            'echo "uid=$(id -u) user=$(id -un)"; '
            "if command -v sudo >/dev/null 2>&1; then "
            "if sudo -n true >/dev/null 2>&1; then echo sudo=ok; else echo sudo=refused; fi; "
            "else echo sudo=missing; fi"
        )

    @staticmethod
    def default() -> dict:
        return {"uid": None, "user": "", "sudo": "missing"}

    def process(self, output: list[str]) -> dict:
        values = dict(field.split("=", 1) for line in output for field in line.split() if "=" in field)
        uid = values.get("uid", "")
        return {"uid": int(uid) if uid.isdigit() else None, "user": values.get("user", ""),
                "sudo": values.get("sudo", "missing")}  # fmt: skip


def settings_facts(host: Any) -> dict[str, str]:
    """What provision/settings.py needs to know about the host itself: kernel, OS codename, CPU vendor."""
    from pyinfra.facts.server import KernelVersion, LinuxDistribution

    return {
        "kernel": host.get_fact(KernelVersion) or "",
        "codename": host.get_fact(LinuxDistribution)["release_meta"].get("VERSION_CODENAME", ""),
        "cpu_vendor_id": host.get_fact(CpuVendorId) or "",
    }
