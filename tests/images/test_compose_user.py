"""The CPU image through compose as an ordinary user would run it: a new, non-root user with access to the engine's
socket, in a fresh checkout with no runs/, .cache/kit or data/ folder, through the make targets (issue 26).

- First run: `make check`, `make finetune` (2 steps) and `make evaluate` work, and every file and folder they leave
  (runs/, .cache/kit/, data/) belongs to that user: the make targets create the bound folders as the user, and
  compose.yaml no longer lets dockerd create them as root.
- memlock: this machine's engine refuses compose.yaml's default (unlimited) locked memory, as a rootless engine
  does (its dockerd has no CAP_SYS_RESOURCE and an 8 MiB hard limit). The user gets a message naming KIT_MEMLOCK;
  with KIT_MEMLOCK set in .env the same job passes, with compose's default networking (none: no interface but
  loopback, and no network created in the engine).
- `docker compose run --rm check` on the CPU image fits one screen and knows it runs in the kit's image.

The user, its group and the socket's group are changed for the test and restored after it. Runs with the image
named by CKIT_COMPOSE_TEST_IMAGE_TAG (a TAG for `make`, e.g. one built with `make image-cpu TAG=...`) when set;
otherwise it builds clinical-finetune-kit:ci-cpu as test_image_build.py does (cached layers: seconds).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import resource
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from .dockerfiles import ROOT
from .test_image_build import TAG, buildx, cpu_base, secrets  # noqa: F401 (fixtures used below)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SOCKET = Path(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://"))
# What `docker compose run --rm check` may print on the CPU image: one screen (a 40-line terminal).
SCREEN_LINES = 40


@pytest.fixture(scope="module")
def image_tag(docker_client, request) -> str:
    """The TAG of a built CPU image: the one named by CKIT_COMPOSE_TEST_IMAGE_TAG, else the CI build's."""
    named = os.environ.get("CKIT_COMPOSE_TEST_IMAGE_TAG")
    if named:
        docker_client.images.get(f"clinical-finetune-kit:{named}-cpu")  # fails clearly when it is not built
        return named
    base = request.getfixturevalue("cpu_base")
    buildx(ROOT, base, request.getfixturevalue("secrets"), f"clinical-finetune-kit:{TAG}-cpu")
    return TAG


def engine_memlock_bytes() -> int | None:
    """The most locked memory this engine grants a container (the hard limit it inherited; None: unlimited).
    The private engine runs under this process's limits (scripts/ci/docker-engine.sh starts it from root's shell)."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return None if hard == resource.RLIM_INFINITY else hard


@pytest.fixture(scope="module")
def kit_user(docker_client, tmp_path_factory) -> Iterator[dict]:
    """A throwaway user in a throwaway group that may use the engine's socket; everything undone afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a throwaway user needs root (CI runs as root)")
    if not SOCKET.is_socket():
        pytest.skip(f"the engine's socket {SOCKET} is not a local unix socket")
    name = f"ckit-u{uuid.uuid4().hex[:8]}"
    base = Path("/var/tmp") / f"{name}-home"  # not under pytest's tmp: that is root's alone (mode 700)
    socket_gid = SOCKET.stat().st_gid
    subprocess.run(["groupadd", name], check=True)
    try:
        subprocess.run(["useradd", "--create-home", "--home-dir", str(base), "--gid", name,
                        "--shell", "/bin/bash", name], check=True)
        os.chown(SOCKET, -1, grp.getgrnam(name).gr_gid)  # the socket's group is the user's (a "docker" group)
        info = pwd.getpwnam(name)
        yield {"name": name, "uid": info.pw_uid, "gid": info.pw_gid, "home": base}
    finally:
        os.chown(SOCKET, -1, socket_gid)
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def fresh_checkout(user: dict, name: str) -> Path:
    """The kit as a fresh clone of this working tree has it (tracked and new files; nothing git ignores: no runs/,
    .cache/, .env), owned by the user."""
    target = user["home"] / name
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
    subprocess.run(["chown", "-R", f"{user['uid']}:{user['gid']}", str(target)], check=True)
    for folder in ("runs", ".cache", "data"):
        assert not (target / folder).exists(), f"{folder} must not exist before the first run"
    return target


def as_user(user: dict, clone: Path, command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`command` in bash as the user, in the clone, with the engine's client settings and nothing else of root's."""
    env = {"HOME": str(user["home"]), "USER": user["name"], "LOGNAME": user["name"], "LANG": "C.UTF-8",
           "PATH": os.environ["PATH"], "DOCKER_HOST": os.environ.get("DOCKER_HOST", ""),
           "DOCKER_CONFIG": os.environ.get("DOCKER_CONFIG", ""), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["runuser", "-u", user["name"], "--", "bash", "-c", f"cd {clone} && {command}"],
                          env={k: v for k, v in env.items() if v}, capture_output=True, text=True, timeout=timeout)


def owners(folder: Path) -> dict[tuple[int, int], list[str]]:
    """(uid, gid) -> up to three paths with that owner, for every file and folder under ``folder``."""
    found: dict[tuple[int, int], list[str]] = {}
    for path in [folder, *folder.rglob("*")]:
        stat = path.lstat()
        found.setdefault((stat.st_uid, stat.st_gid), []).append(str(path))
    return {key: paths[:3] for key, paths in found.items()}


def test_first_run_as_a_new_user_in_a_fresh_clone(image_tag, kit_user):
    clone = fresh_checkout(kit_user, "first-run")
    make = f"make -s TAG={image_tag}"
    env = as_user(kit_user, clone, f"{make} env")
    assert env.returncode == 0, env.stderr
    # This machine's engine: no container network may be made (host networking), and the locked-memory limit it
    # can grant: both are the user's settings in .env now, no override file.
    settings = "KIT_NETWORK=host\n" + (f"KIT_MEMLOCK={engine_memlock_bytes()}\n" if engine_memlock_bytes() else "")
    with open(clone / ".env", "a") as handle:
        handle.write(settings)
    early = as_user(kit_user, clone, f"{make} evaluate")
    assert early.returncode != 0 and "make finetune" in early.stderr and "runs/demo/adapter" in early.stderr, \
        early.stderr[-2000:]
    check = as_user(kit_user, clone, f"{make} check ARGS=--json")
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(check.stdout)}
    assert results["platform.pins"]["status"] == "pass", results["platform.pins"]
    finetune = as_user(kit_user, clone, f'{make} finetune ARGS="--recipe recipes/demo-cpu.yaml --plain '
                                        'train.steps=2 eval.limit=8 eval.before_training=false"')
    assert finetune.returncode == 0, finetune.stdout[-3000:] + finetune.stderr[-3000:]
    assert (clone / "runs/demo/adapter/adapter_config.json").is_file()
    evaluate = as_user(kit_user, clone, f'{make} evaluate ARGS="--model smollm2-135m-instruct --adapter '
                                        'runs/demo/adapter --data runs/demo/data/test.jsonl --output '
                                        'runs/demo/eval-cli --scoring cloze --limit 8"')
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    assert len((clone / "runs/demo/eval-cli/predictions.jsonl").read_text().splitlines()) == 8
    assert any((clone / ".cache/kit").rglob("*.safetensors")), "the converted demo model is in the cache folder"
    mine = (kit_user["uid"], kit_user["gid"])
    for folder in ("runs", ".cache", "data"):
        found = owners(clone / folder)
        assert set(found) == {mine}, f"{folder}: owned by {found}, expected only {mine} ({kit_user['name']})"


def test_memlock_setting_on_an_engine_that_refuses_the_default(image_tag, kit_user, docker_client):
    limit = engine_memlock_bytes()
    if limit is None:
        pytest.skip("this engine grants unlimited locked memory: nothing refuses compose.yaml's default here")
    clone = fresh_checkout(kit_user, "memlock")
    make = f"make -s TAG={image_tag}"
    networks = sorted(n.name for n in docker_client.networks.list())
    refused = as_user(kit_user, clone, f"{make} check")
    assert refused.returncode != 0
    assert "error setting rlimit type 8" in refused.stderr, refused.stderr[-2000:]
    assert "KIT_MEMLOCK=-1 (.env" in refused.stderr and "Set KIT_MEMLOCK in .env" in refused.stderr
    with open(clone / ".env", "a") as handle:
        handle.write(f"KIT_MEMLOCK={limit}\n")
    passed = as_user(kit_user, clone, f"{make} check ARGS=--json")
    assert passed.returncode == 0, passed.stderr[-3000:]
    assert not [r["name"] for r in json.loads(passed.stdout) if r["status"] == "fail"]
    # The user's network default held: none (compose.yaml's KIT_NETWORK default), nothing created in the engine.
    config = as_user(kit_user, clone, "docker compose config --format json")
    assert json.loads(config.stdout)["services"]["check"]["network_mode"] == "none"
    inside = as_user(kit_user, clone, "docker compose run --rm -T --entrypoint python check -c "
                                      "'import resource, socket; print(socket.if_nameindex(), "
                                      "resource.getrlimit(resource.RLIMIT_MEMLOCK)[0])'")
    assert inside.returncode == 0, inside.stderr[-2000:]
    assert inside.stdout.strip() == f"[(1, 'lo')] {limit}", inside.stdout
    assert sorted(n.name for n in docker_client.networks.list()) == networks


def test_plain_compose_check_fits_one_screen_and_knows_the_kit_image(image_tag, kit_user):
    clone = fresh_checkout(kit_user, "screen")
    assert as_user(kit_user, clone, f"make -s TAG={image_tag} env").returncode == 0
    settings = "KIT_NETWORK=host\n" + (f"KIT_MEMLOCK={engine_memlock_bytes()}\n" if engine_memlock_bytes() else "")
    with open(clone / ".env", "a") as handle:
        handle.write(settings)
    # A plain `docker compose run` needs the folders made first (compose.yaml says so); it refuses without them
    # rather than have dockerd create them as root.
    missing = as_user(kit_user, clone, "docker compose run --rm -T check")
    assert missing.returncode != 0 and "bind source path does not exist" in missing.stderr, missing.stderr[-2000:]
    assert not (clone / "runs").exists()
    result = as_user(kit_user, clone, "mkdir -p runs .cache/kit data && docker compose run --rm -T check 2>&1")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(lines) <= SCREEN_LINES, f"{len(lines)} lines:\n{result.stdout}"
    assert "kit cpu image" in result.stdout and "not a kit image" not in result.stdout
    assert "warning:" not in result.stdout and "it/s]" not in result.stdout, result.stdout
    print(f"docker compose run --rm check: {len(lines)} lines")
