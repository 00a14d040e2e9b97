"""The image helpers around stack.env: digest resolution, the git fetch inside the CA wrapper, .env updates."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from .dockerfiles import ROOT

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
