"""Fixtures for the image tests: the docker CLI/engine (started by scripts/ci/docker-engine.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client for a reachable engine, or skip (the reason says how to start one)."""
    try:
        import docker
    except ImportError:
        pytest.skip("docker SDK not installed (requirements/dev.txt)")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as error:  # any failure to reach the engine means: no engine here
        pytest.skip(f"no Docker engine reachable ({error.__class__.__name__}): "
                    "run `eval \"$(bash scripts/ci/docker-engine.sh)\"` first")
    if not compose_available() or subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode:
        pytest.skip("docker CLI with the buildx and compose plugins not on PATH (scripts/ci/docker-env.sh)")
    return client
