"""Where the image tests find the docker CLI and the private engine (scripts/ci/docker-engine.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ENGINE_ENV = Path(os.environ.get("CKIT_DOCKER_ROOT", "/var/tmp/ckit-docker")) / "env"


def _adopt_engine_env() -> None:
    """Use the private engine's environment when the shell did not source it (local runs)."""
    if os.environ.get("DOCKER_HOST") or not ENGINE_ENV.is_file():
        return
    for line in ENGINE_ENV.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export "):].partition("=")
            value = value.replace("$PATH", os.environ.get("PATH", ""))
            os.environ[name] = value


_adopt_engine_env()


def docker_cli() -> str | None:
    return shutil.which("docker")


def compose_available() -> bool:
    cli = docker_cli()
    if not cli:
        return False
    return subprocess.run([cli, "compose", "version"], capture_output=True).returncode == 0
