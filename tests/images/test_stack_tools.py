"""The image helpers around stack.env: digest resolution, the git fetch inside the CA wrapper, .env updates."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from .dockerfiles import ROCM_TORCH_VERSIONS, ROOT, STACK

spec = importlib.util.spec_from_file_location("resolve_digests", ROOT / "docker" / "resolve_digests.py")
resolve_digests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(resolve_digests)

ZERO = "sha256:" + "0" * 64
NEW = "sha256:" + "ab" * 32
STACK_TEXT = f"""# comment
ROCM_VERSION=6.1.2
ROCM_BASE=rocm/dev-ubuntu-22.04:6.1.2@{ZERO}
CPU_BASE=debian:bookworm-slim
"""


def fake_docker(tmp_path: Path, digest: str, fail: bool = False) -> str:
    script = tmp_path / "docker"
    body = 'echo "no registry" >&2; exit 1' if fail else f"echo '\"{digest}\"'"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n{body}\n')
    script.chmod(0o755)
    return str(script)


def test_resolve_digests_pins_every_base_and_keeps_the_rest(tmp_path):
    stack = tmp_path / "stack.env"
    stack.write_text(STACK_TEXT)
    assert resolve_digests.main(["--docker", fake_docker(tmp_path, NEW), str(stack)]) == 0
    lines = stack.read_text().splitlines()
    assert lines[0] == "# comment" and lines[1] == "ROCM_VERSION=6.1.2"
    assert lines[2] == f"ROCM_BASE=rocm/dev-ubuntu-22.04:6.1.2@{NEW}"
    assert lines[3] == f"CPU_BASE=debian:bookworm-slim@{NEW}"
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("buildx imagetools inspect rocm/dev-ubuntu-22.04:6.1.2 --format")
    assert not list(tmp_path.glob(".stack.env*")), "temporary file left behind"


def test_resolve_digests_changes_nothing_when_a_lookup_fails(tmp_path, capsys):
    stack = tmp_path / "stack.env"
    stack.write_text(STACK_TEXT)
    assert resolve_digests.main(["--docker", fake_docker(tmp_path, NEW, fail=True), str(stack)]) == 1
    assert stack.read_text() == STACK_TEXT
    assert "rocm/dev-ubuntu-22.04:6.1.2" in capsys.readouterr().err


def test_resolve_digests_refuses_a_non_digest(tmp_path):
    with pytest.raises(resolve_digests.DigestError, match=r"stack.env:3: ROCM_BASE: .* expected sha256"):
        resolve_digests.resolve(STACK_TEXT, lambda ref: "latest")
    with pytest.raises(resolve_digests.DigestError):
        resolve_digests.resolve(STACK_TEXT, lambda ref: ZERO)


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


OLD = "sha256:" + "cd" * 32


def test_resolve_digests_leaves_a_recorded_digest_alone_by_default_and_shows_the_diff(tmp_path, capsys):
    stack = tmp_path / "stack.env"
    stack.write_text(STACK_TEXT + f"CUDA_RUNTIME_BASE=ubuntu:22.04@{OLD}\n")
    assert resolve_digests.main(["--docker", fake_docker(tmp_path, NEW), str(stack)]) == 0
    lines = stack.read_text().splitlines()
    assert lines[2] == f"ROCM_BASE=rocm/dev-ubuntu-22.04:6.1.2@{NEW}"  # placeholder: filled
    assert lines[3] == f"CPU_BASE=debian:bookworm-slim@{NEW}"  # no digest at all: filled
    assert lines[4] == f"CUDA_RUNTIME_BASE=ubuntu:22.04@{OLD}"  # a recorded digest: untouched
    assert "ubuntu:22.04" not in (tmp_path / "calls").read_text()  # and not even looked up
    out = capsys.readouterr().out
    assert f"-ROCM_BASE=rocm/dev-ubuntu-22.04:6.1.2@{ZERO}" in out and f"+ROCM_BASE=rocm/dev-ubuntu-22.04:6.1.2@{NEW}" in out
    assert "--- a/stack.env" in out and "placeholder bases only" in out


def test_resolve_digests_refresh_looks_up_every_base(tmp_path, capsys):
    stack = tmp_path / "stack.env"
    stack.write_text(STACK_TEXT + f"CUDA_RUNTIME_BASE=ubuntu:22.04@{OLD}\n")
    assert resolve_digests.main(["--docker", fake_docker(tmp_path, NEW), "--refresh", str(stack)]) == 0
    assert stack.read_text().splitlines()[4] == f"CUDA_RUNTIME_BASE=ubuntu:22.04@{NEW}"
    assert f"+CUDA_RUNTIME_BASE=ubuntu:22.04@{NEW}" in capsys.readouterr().out


def test_resolve_digests_with_nothing_to_do_writes_nothing(tmp_path, capsys):
    stack = tmp_path / "stack.env"
    text = f"ROCM_BASE=rocm/dev-ubuntu-22.04:6.1.2@{OLD}\n"
    stack.write_text(text)
    assert resolve_digests.main(["--docker", fake_docker(tmp_path, NEW), str(stack)]) == 0
    assert stack.read_text() == text and not (tmp_path / "calls").exists()
    assert "0 base digest(s) changed" in capsys.readouterr().out


def test_make_resolve_digests_passes_refresh():
    makefile = (ROOT / "Makefile").read_text()
    rule = makefile[makefile.index("\nresolve-digests:"):].split("\n\n")[0]
    assert "$(if $(REFRESH),--refresh)" in rule


def test_fetch_git_ref_checks_out_exactly_the_commit(tmp_path):
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git("init", "-q", cwd=upstream)
    (upstream / "a.txt").write_text("one\n")
    git("add", ".", cwd=upstream)
    git("commit", "-qm", "one", cwd=upstream)
    first = git("rev-parse", "HEAD", cwd=upstream)
    (upstream / "a.txt").write_text("two\n")
    git("commit", "-qam", "two", cwd=upstream)
    dest = tmp_path / "src"
    script = ROOT / "docker" / "fetch-git-ref.sh"
    result = subprocess.run(["sh", str(script), f"file://{upstream}", first, str(dest)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (dest / "a.txt").read_text() == "one\n" and git("rev-parse", "HEAD", cwd=dest) == first
    # No partial clone: nothing is left to fetch lazily at a later checkout.
    assert git("config", "--get-regexp", "remote.origin.*", cwd=dest).count("promisor") == 0
    again = subprocess.run(["sh", str(script), f"file://{upstream}", first, str(dest)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    missing = subprocess.run(["sh", str(script), f"file://{upstream}", "f" * 40, str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert missing.returncode != 0


def test_env_update_keeps_the_users_own_lines(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("KIT_DATA_DIR=/srv/data\n# my note\nKIT_TAG=old\n")
    result = subprocess.run(["bash", str(ROOT / "docker" / "compose-env.sh"), "--update", str(env_file), "cpu", "v2", ""],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = env_file.read_text().splitlines()
    assert "KIT_DATA_DIR=/srv/data" in lines and "# my note" in lines
    assert "KIT_TAG=v2" in lines and "KIT_TAG=old" not in lines
    assert sum(line.startswith("KIT_VENDOR=") for line in lines) == 1
    assert not [p for p in tmp_path.iterdir() if p.name != ".env"], "temporary file left behind"


# --- ROCm torch and pytorch-triton-rocm: hash-locked outside the uv locks (their index is not PyPI) -----------

INDEX_LOCK = ROOT / "requirements" / "image-rocm-torch-index.txt"
PREBUILT = ROCM_TORCH_VERSIONS["prebuilt"]  # the index lock serves the ROCM_TORCH=prebuilt position


def index_pins(text: str) -> dict[str, list[str]]:
    """name==version -> its --hash values, from a pip requirements file with hashes."""
    pins: dict[str, list[str]] = {}
    for entry in re.sub(r"\\\n\s*", " ", text).splitlines():
        if entry.strip() and not entry.startswith("#"):
            pin, *opts = entry.split()
            pins[pin] = [o.split("=", 1)[1] for o in opts if o.startswith("--hash=")]
    return pins


def test_rocm_index_lock_pins_stack_envs_versions_by_hash():
    pins = index_pins(INDEX_LOCK.read_text())
    assert set(pins) == {f"torch=={PREBUILT}", f"pytorch-triton-rocm=={STACK['ROCM_TRITON_VERSION']}"}
    for pin, hashes in pins.items():
        assert len(hashes) == 1 and re.fullmatch(r"sha256:[0-9a-f]{64}", hashes[0]), (pin, hashes)


def rocm_torch_guard() -> str:
    """The shell of Dockerfile.rocm's torch stage that vets the index lock before anything is downloaded."""
    text = (ROOT / "Dockerfile.rocm").read_text()
    start = text.index("    && index_lock=")
    end = text.index("    done \\\n", start) + len("    done")
    return ": \\\n" + text[start:end].replace("/tmp/locks/image-rocm-torch-index.txt", '"$LOCK"') + "\n"


def run_guard(tmp_path: Path, lock_text: str) -> subprocess.CompletedProcess:
    lock = tmp_path / "index.txt"
    lock.write_text(lock_text)
    env = {**os.environ, "LOCK": str(lock), "ROCM_TORCH_VERSION": PREBUILT,
           "ROCM_TRITON_VERSION": STACK["ROCM_TRITON_VERSION"], "ROCM_TORCH_INDEX_URL": STACK["ROCM_TORCH_INDEX_URL"]}
    return subprocess.run(["bash", "-c", rocm_torch_guard()], env=env, capture_output=True, text=True)


def test_rocm_build_stops_with_a_message_while_the_hashes_are_placeholders(tmp_path):
    result = run_guard(tmp_path, INDEX_LOCK.read_text()) if ZERO in INDEX_LOCK.read_text() else None
    if result is None:
        pytest.skip("the committed index lock has real hashes: the placeholder case is tested below")
    assert result.returncode == 2 and "all-zero placeholder" in result.stderr and "sha256sum" in result.stderr


def test_rocm_build_guard_accepts_filled_hashes_and_refuses_other_versions(tmp_path):
    filled = INDEX_LOCK.read_text().replace(ZERO, NEW)
    assert run_guard(tmp_path, filled).returncode == 0
    moved = filled.replace(f"torch=={PREBUILT} ", "torch==2.4.0+rocm6.1 ")
    result = run_guard(tmp_path, moved)
    assert result.returncode == 2 and f"does not pin 'torch=={PREBUILT}'" in result.stderr
    placeholder = filled.replace(NEW, ZERO, 1)
    assert run_guard(tmp_path, placeholder).returncode == 2


def test_rocm_torch_stage_installs_the_index_lock_with_hashes():
    text = (ROOT / "Dockerfile.rocm").read_text()
    assert "COPY requirements/image-rocm-torch.lock requirements/image-rocm-torch-index.txt /tmp/locks/" in text
    install = text[text.index('--require-hashes --index-url "${ROCM_TORCH_INDEX_URL}"'):].split("\n")[1]
    assert '-r "$index_lock"' in install and "--no-deps" in text[text.index("index_lock=/"):text.index(install)]
