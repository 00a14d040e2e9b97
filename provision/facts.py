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
        return "rocminfo"

    def command(self) -> str:
        return "rocminfo 2>/dev/null || true"

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
