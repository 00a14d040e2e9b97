"""docker/compose/run.sh (the make run targets' wrapper) and the Makefile's non-build targets, with a fake docker:
no engine needed, seconds. The real runs are in test_compose_user.py (issue 26)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kit.manifest import revision_state

from .dockerfiles import ROOT

RUNC_MEMLOCK_ERROR = ("Error response from daemon: failed to create task for container: OCI runtime create failed: "
                      "runc create failed: unable to start container process: error during container init: error "
                      "setting rlimits for ready process: error setting rlimit type 8: operation not permitted")


@pytest.fixture
def kit(tmp_path) -> Path:
    """A checkout holding what the wrapper reads: itself, compose.yaml, no runs/.cache/data."""
    root = tmp_path / "kit"
    (root / "docker" / "compose").mkdir(parents=True)
    shutil.copy2(ROOT / "docker/compose/run.sh", root / "docker/compose/run.sh")
    shutil.copy2(ROOT / "compose.yaml", root / "compose.yaml")
    return root


def fake_docker(tmp_path: Path, stderr: str = "", status: int = 0) -> Path:
    script = tmp_path / "docker"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/docker.log"\nprintf "%s\\n" "{stderr}" >&2\n'
                      f"exit {status}\n")
    script.chmod(0o755)
    return script


def wrapper(kit: Path, docker: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    return subprocess.run(["bash", "docker/compose/run.sh", str(docker), "compose", "run", "--rm", *args], cwd=kit,
                          env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_folders_are_created_before_the_run_and_the_command_runs_as_given(kit, tmp_path):
    docker = fake_docker(tmp_path)
    result = wrapper(kit, docker, "check", "--json")
    assert result.returncode == 0, result.stderr
    for folder in ("runs", ".cache/kit", "data"):
        assert (kit / folder).is_dir() and (kit / folder).stat().st_uid == os.getuid()
    assert (tmp_path / "docker.log").read_text().strip() == "compose run --rm check --json"


def test_a_mistyped_data_dir_is_named_and_not_created(kit, tmp_path):
    docker = fake_docker(tmp_path)
    (kit / ".env").write_text("KIT_DATA_DIR=./dta/medqa\n")
    result = wrapper(kit, docker, "finetune")
    assert result.returncode == 2 and not (kit / "dta").exists()
    assert "KIT_DATA_DIR=./dta/medqa (.env)" in result.stderr and str(kit / "dta/medqa") in result.stderr
    assert not (tmp_path / "docker.log").exists(), "no container may start"
    # The environment wins over .env, as in compose.
    (kit / ".env").write_text("KIT_DATA_DIR=./dta  # my data\n")  # compose's .env comment syntax
    result = wrapper(kit, docker, "finetune")
    assert result.returncode == 2 and "KIT_DATA_DIR=./dta (.env)" in result.stderr
    result = wrapper(kit, docker, "finetune", env={"KIT_DATA_DIR": "/nonexistent/medqa"})
    assert result.returncode == 2 and "KIT_DATA_DIR=/nonexistent/medqa (the environment)" in result.stderr


def test_evaluate_before_any_finetune_says_what_to_run(kit, tmp_path):
    docker = fake_docker(tmp_path)
    result = wrapper(kit, docker, "evaluate")
    assert result.returncode == 2 and "make finetune" in result.stderr and "make demo" in result.stderr
    assert "runs/demo/adapter" in result.stderr
    named = wrapper(kit, docker, "evaluate", "--adapter", "runs/mine/adapter", "--data=/data/test.jsonl")
    assert named.returncode == 2 and "runs/mine/adapter" in named.stderr and "runs/demo" not in named.stderr
    (kit / "runs/mine/adapter").mkdir(parents=True)
    assert wrapper(kit, docker, "evaluate", "--adapter", "runs/mine/adapter", "--data=/data/t.jsonl").returncode == 0


def test_runcs_memlock_error_names_the_setting(kit, tmp_path):
    docker = fake_docker(tmp_path, stderr=RUNC_MEMLOCK_ERROR, status=1)
    (kit / ".env").write_text("KIT_MEMLOCK=-1\n")
    result = wrapper(kit, docker, "check")
    assert result.returncode == 1 and RUNC_MEMLOCK_ERROR in result.stderr
    assert "KIT_MEMLOCK=-1 (.env; -1 is unlimited" in result.stderr and "Set KIT_MEMLOCK in .env" in result.stderr
    other = wrapper(kit, fake_docker(tmp_path, stderr="no such image", status=1), "check")
    assert other.returncode == 1 and "KIT_MEMLOCK" not in other.stderr
    bad = wrapper(kit, docker, "check", env={"KIT_MEMLOCK": "64g"})
    assert bad.returncode == 2 and "KIT_MEMLOCK=64g (the environment): expected -1" in bad.stderr


def test_an_output_folder_the_user_cannot_write_is_named(kit, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes everywhere")
    (kit / "runs").mkdir()
    (kit / "runs").chmod(0o555)
    result = wrapper(kit, fake_docker(tmp_path), "check")
    assert result.returncode == 2 and "KIT_OUTPUT_DIR=./runs (default)" in result.stderr


def test_compose_never_creates_the_bound_folders():
    text = (ROOT / "compose.yaml").read_text()
    assert "create_host_path: true" not in text and text.count("create_host_path: false") == 3
    assert "memlock: ${KIT_MEMLOCK:--1}" in text


def test_make_env_writes_the_memlock_default_once_and_keeps_the_users_value(tmp_path):
    env_file = tmp_path / ".env"
    run = ["bash", str(ROOT / "docker/compose-env.sh"), "--update", str(env_file), "cpu", "t", ""]
    fake = {**os.environ, "DOCKER": str(fake_docker(tmp_path, status=1))}
    assert subprocess.run(run, env=fake, capture_output=True).returncode == 0
    assert "KIT_MEMLOCK=-1" in env_file.read_text().splitlines()
    env_file.write_text(env_file.read_text().replace("KIT_MEMLOCK=-1", "KIT_MEMLOCK=8388608"))
    assert subprocess.run(run, env=fake, capture_output=True).returncode == 0
    lines = env_file.read_text().splitlines()
    assert "KIT_MEMLOCK=8388608" in lines and "KIT_MEMLOCK=-1" not in lines


def make_dry(*args: str) -> str:
    # Under `make test` the environment carries MAKELEVEL/MAKEFLAGS, and a nested make prints "Entering directory"
    # first: run it as a user would, from a shell.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_wheelhouse_creates_the_venv_first():
    lines = make_dry("wheelhouse").splitlines()
    assert lines[0] == "bash scripts/bootstrap.sh" and "scripts/airgap/wheelhouse.py" in lines[1]


def test_make_base_local_names_what_that_path_needs():
    text = (ROOT / "Makefile").read_text()
    hint = text[text.index("base-local: ##"):text.index("COMPOSE =")]
    for needed in ('BUILD_FLAGS=\\"--network host\\"', "CA_BUNDLE=", "TORCH_WHEELS=", "WHEELHOUSE="):
        assert needed in hint, needed


def test_the_revision_says_dirty_with_the_diffs_hash(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(ROOT / "Makefile", repo / "Makefile")
    shutil.copy2(ROOT / "stack.env", repo / "stack.env")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)

    def vcs_ref() -> str:
        out = subprocess.run(["make", "-pn", "help"], cwd=repo, capture_output=True, text=True).stdout
        return next(line.split(":= ", 1)[1] for line in out.splitlines() if line.startswith("VCS_REF :="))

    clean = vcs_ref()
    assert "dirty" not in clean and len(clean) == 12
    (repo / "stack.env").write_text((repo / "stack.env").read_text() + "\n# changed\n")
    first = vcs_ref()
    assert first.startswith(clean + "-dirty-") and len(first.rsplit("-", 1)[1]) == 12
    (repo / "new.py").write_text("x = 1\n")  # a new file changes the hash too
    second = vcs_ref()
    assert second.startswith(clean + "-dirty-") and second != first
    assert revision_state(second) == {"commit": clean, "dirty": True, "diff_sha256": second.rsplit("-", 1)[1]}
    assert revision_state(clean) == {"commit": clean, "dirty": False, "diff_sha256": None}
