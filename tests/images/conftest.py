"""Fixtures for the image tests: the docker engine (started by scripts/ci/docker-engine.sh)."""

from __future__ import annotations

import subprocess

import pytest

from .engine import compose_available


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
