"""The GPU images' wheelhouse branch (WHEELHOUSE=1 + the `wheelhouse` build context), checked without building them.

The ROCm and CUDA images cannot be built here (no vendor base images, no GPU toolchains), so this reads
Dockerfile.rocm / Dockerfile.cuda: with the wheelhouse, every pip call of the torch and compile stages must take
no index, and every source must come from /wheelhouse/sources through docker/wheelhouse-source.sh (sha256 checked).
The names the Dockerfiles ask for are computed by running their own shell snippet with stack.env's values, and
compared with the names scripts/airgap/wheelhouse.py writes; then the snippet runs for real against a fake
wheelhouse packed by wheelhouse.py's own functions.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .dockerfiles import DOCKERFILES, ROOT, STACK, Instruction, instructions

_spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "airgap" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("wheelhouse", wheelhouse)
_spec.loader.exec_module(wheelhouse)

GPU = ("rocm", "cuda")
HELPER = ROOT / "docker" / "wheelhouse-source.sh"
BRANCH_START = 'if [ -n "${WHEELHOUSE}" ]; then'
# Commands that reach the network (or need it): none may run in the wheelhouse branch.
NETWORK = ("with-build-secrets", "fetch-git-ref", "urlretrieve", "git ", "curl", "wget")


def stage_items(vendor: str, stage: str) -> list[Instruction]:
    """The instructions of one named stage of Dockerfile.<vendor>."""
    out: list[Instruction] = []
    current = None
    for item in instructions(DOCKERFILES[vendor].read_text()):
        if item.keyword == "FROM":
            current = item.args.split()[-1]
        elif current == stage:
            out.append(item)
    assert out, f"Dockerfile.{vendor} has no stage {stage!r}"
    return out


# The stages that run pip, and those that compile from a source tree, per vendor: ROCm's torch comes from one of
# two stages (stack.env ROCM_TORCH) and, compiled, from a source archive like the extensions.
PIP_STAGES = {"rocm": ("torch-prebuilt", "torch-compile", "torch-source", "build"), "cuda": ("torch", "build")}
# In the order of wheelhouse.source_files(): the extensions, then torch.
COMPILE_STAGES = {"rocm": ("build", "torch-compile"), "cuda": ("build",)}


def source_runs(vendor: str) -> list[Instruction]:
    """The compile stages' RUN steps that choose between the wheelhouse and the network for a source tree."""
    runs = []
    for stage in COMPILE_STAGES[vendor]:
        found = [i for i in stage_items(vendor, stage) if i.keyword == "RUN" and BRANCH_START in i.args]
        assert found, f"Dockerfile.{vendor}: no `{BRANCH_START}` step in the {stage} stage"
        runs += found
    return runs


def if_block(text: str) -> str:
    """From BRANCH_START to its matching `fi` (nested if/fi counted): the shell snippet that picks the source."""
    start = text.index(BRANCH_START)
    depth = 0
    for match in re.finditer(r"(?<![\w-])(if|fi)(?![\w-])", text[start:]):
        depth += 1 if match.group(1) == "if" else -1
        if depth == 0:
            return text[start:start + match.end()]
    raise AssertionError(f"no `fi` closes {BRANCH_START!r} in: {text[start:start + 200]}")


def then_branch(block: str) -> str:
    """The wheelhouse side of the snippet: up to the `else` of the outer if (which has no nested if)."""
    return block[len(BRANCH_START):].split("else", 1)[0]


def pip_commands(text: str) -> list[str]:
    return re.findall(r"pip (?:install|wheel)[^&;]*", text)


@pytest.mark.parametrize("vendor", GPU)
def test_the_wheelhouse_context_has_an_empty_default(vendor):
    # Without WHEELHOUSE=DIR the Makefile passes no such context: the stage of that name must exist and be empty.
    assert re.search(r"^FROM scratch AS wheelhouse$", DOCKERFILES[vendor].read_text(), re.M)


@pytest.mark.parametrize("vendor,stage", [(v, s) for v in GPU for s in PIP_STAGES[v]])
def test_every_pip_call_takes_no_index_with_the_wheelhouse(vendor, stage):
    items = stage_items(vendor, stage)
    declared = False
    calls = 0
    for item in items:
        if item.keyword == "ARG" and item.args.split("=")[0] == "WHEELHOUSE":
            declared = True
        if item.keyword != "RUN":
            continue
        for command in pip_commands(item.args):
            calls += 1
            where = f"Dockerfile.{vendor} line {item.line} ({stage} stage): {command}"
            assert declared, f"{where}: uses WHEELHOUSE before its ARG in this stage"
            if command.startswith("pip install --no-deps --no-index "):
                continue  # a local wheel file (the compiled torch): never an index
            if command.startswith("pip install"):
                assert "${WHEELHOUSE:+--no-index --find-links /wheelhouse/wheels}" in command, where
            else:
                assert "${WHEELHOUSE:+--no-index}" in command, where
        if "/wheelhouse" in item.args or "WHEELHOUSE" in item.args:
            assert "--mount=type=bind,from=wheelhouse,target=/wheelhouse" in item.args, (
                f"Dockerfile.{vendor} line {item.line}: reads the wheelhouse without mounting it")
    assert calls, f"Dockerfile.{vendor}: no pip call in the {stage} stage"


@pytest.mark.parametrize("vendor", GPU)
def test_every_source_comes_from_the_wheelhouse_with_a_checksum(vendor):
    for item in source_runs(vendor):
        block = if_block(item.args)
        branch = then_branch(block)
        assert "wheelhouse-source " in branch, f"Dockerfile.{vendor} line {item.line}: {branch}"
        for command in NETWORK:
            assert command not in branch, f"Dockerfile.{vendor} line {item.line}: {command!r} in the wheelhouse branch"
        # Both sides leave the tree's path in $src, and the compile step builds from there.
        assert item.args[item.args.index(block) + len(block):].lstrip().startswith('&& cd "$src"'), item.line
    for stage in COMPILE_STAGES[vendor]:
        copied = [i.args for i in stage_items(vendor, stage) if i.keyword == "COPY"]
        assert "docker/wheelhouse-source.sh /usr/local/bin/wheelhouse-source" in copied, stage


def _run_snippets(vendor: str, tmp_path: Path, bin_dir: Path, env_extra: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Each source step's snippet with WHEELHOUSE=1 and stack.env's values, /src moved into tmp_path; then
    `cd "$src"` as the Dockerfile does, printing the tree's setup.py."""
    env = {**os.environ, **STACK, "WHEELHOUSE": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}", **env_extra}
    results = []
    for item in source_runs(vendor):
        snippet = if_block(item.args).replace("/src/", f"{tmp_path}/src/")
        results.append(subprocess.run(["bash", "-o", "pipefail", "-c", snippet + ' && cd "$src" && cat setup.py'],
                                      env=env, capture_output=True, text=True))
    return results


@pytest.mark.parametrize("vendor", GPU)
def test_the_names_the_dockerfiles_read_are_the_names_wheelhouse_py_writes(vendor, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls"
    # A stand-in that records its arguments (FILE DEST [PINNED]) and makes DEST a tree.
    (bin_dir / "wheelhouse-source").write_text(
        f'#!/bin/sh\necho "$*" >> "{record}"\nmkdir -p "$2" && echo stub > "$2/setup.py"\n')
    (bin_dir / "wheelhouse-source").chmod(0o755)
    results = _run_snippets(vendor, tmp_path, bin_dir, {})
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    calls = [line.split() for line in record.read_text().splitlines()]
    assert [call[0] for call in calls] == wheelhouse.source_files(vendor, STACK)
    if vendor == "cuda":  # the one source whose checksum stack.env pins: it is passed on
        assert [call[2:] for call in calls] == [[STACK["CUDA_FLASH_ATTN_SHA256"]]]


def fake_wheelhouse(root: Path, vendor: str) -> dict[str, str]:
    """sources/ with every file source_files() names (a setup.py naming the file), packed and summed as
    wheelhouse.py packs and sums; returns name -> sha256."""
    (root / "wheels").mkdir(parents=True)
    (root / "sources").mkdir()
    for name in wheelhouse.source_files(vendor, STACK):
        tree = root / "trees" / name
        tree.mkdir(parents=True)
        (tree / "setup.py").write_text(f"# {name}\n")
        wheelhouse.deterministic_tar_gz(tree, root / "sources" / name, name.removesuffix(".tar.gz"))
    shutil.rmtree(root / "trees")
    wheelhouse.write_sums(root)
    return {name: wheelhouse.sha256_file(root / "sources" / name) for name in wheelhouse.source_files(vendor, STACK)}


@pytest.fixture
def helper_bin(tmp_path) -> Path:
    """docker/wheelhouse-source.sh installed as the Dockerfiles install it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(HELPER, bin_dir / "wheelhouse-source")
    return bin_dir


@pytest.mark.parametrize("vendor", GPU)
def test_the_dockerfile_snippets_unpack_a_checked_wheelhouse(vendor, tmp_path, helper_bin):
    house = tmp_path / "wheelhouse"
    sums = fake_wheelhouse(house, vendor)
    # The fake sdist cannot have the real sha256 that stack.env pins for CUDA: pin the fake's instead.
    pin = {"CUDA_FLASH_ATTN_SHA256": sums[wheelhouse.url_file_name(STACK["CUDA_FLASH_ATTN_URL"])]} if vendor == "cuda" else {}
    results = _run_snippets(vendor, tmp_path, helper_bin, {"WHEELHOUSE_DIR": str(house), **pin})
    assert [r.returncode for r in results] == [0] * len(results), [r.stderr for r in results]
    assert [r.stdout for r in results] == [f"# {name}\n" for name in sums]
    if vendor == "cuda":
        # The real pin: the fake archive is not the file stack.env names, and the build stops.
        (result,) = _run_snippets(vendor, tmp_path / "again", helper_bin, {"WHEELHOUSE_DIR": str(house)})
        assert result.returncode != 0 and "stack.env pins " + STACK["CUDA_FLASH_ATTN_SHA256"] in result.stderr


def _helper(house: Path, *args: str, bin_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "wheelhouse-source"), *args], capture_output=True, text=True,
                          env={**os.environ, "WHEELHOUSE_DIR": str(house)})


def test_helper_refuses_an_archive_that_differs_from_sha256sums(tmp_path, helper_bin):
    house = tmp_path / "wh"
    (name,) = fake_wheelhouse(house, "cuda")
    with open(house / "sources" / name, "ab") as archive:
        archive.write(b"\0")
    result = _helper(house, name, str(tmp_path / "src"), bin_dir=helper_bin)
    assert result.returncode == 1 and "SHA256SUMS records" in result.stderr and name in result.stderr
    assert not (tmp_path / "src").exists()


def test_helper_refuses_a_missing_archive_or_sums_line(tmp_path, helper_bin):
    house = tmp_path / "wh"
    (name,) = fake_wheelhouse(house, "cuda")
    missing = _helper(house, "flash_attn-0.0.0.tar.gz", str(tmp_path / "src"), bin_dir=helper_bin)
    assert missing.returncode == 1 and "flash_attn-0.0.0.tar.gz is missing" in missing.stderr
    (house / "SHA256SUMS").write_text("")
    unlisted = _helper(house, name, str(tmp_path / "src"), bin_dir=helper_bin)
    assert unlisted.returncode == 1 and f"no line for sources/{name}" in unlisted.stderr


def test_helper_refuses_members_outside_the_archive_folder(tmp_path, helper_bin):
    house = tmp_path / "wh"
    (house / "sources").mkdir(parents=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "setup.py").write_text("x\n")
    wheelhouse.deterministic_tar_gz(tree, house / "sources" / "pkg-1.tar.gz", "other-1")
    wheelhouse.write_sums(house)
    result = _helper(house, "pkg-1.tar.gz", str(tmp_path / "src"), bin_dir=helper_bin)
    assert result.returncode == 1 and "is not under pkg-1/" in result.stderr


def test_helper_keeps_an_earlier_unpack_of_the_same_archive_and_replaces_another(tmp_path, helper_bin):
    # The build's cache mount keeps compiled objects across builds of the same source; a new source starts clean.
    house = tmp_path / "wh"
    (name,) = fake_wheelhouse(house, "cuda")
    dest = tmp_path / "src"
    assert _helper(house, name, str(dest), bin_dir=helper_bin).returncode == 0
    (dest / "build.o").write_text("object\n")
    assert _helper(house, name, str(dest), bin_dir=helper_bin).returncode == 0
    assert (dest / "build.o").exists()
    shutil.rmtree(house)
    fake_wheelhouse(house, "cuda")  # packed again: the same bytes, so the tree (and its objects) stays
    assert _helper(house, name, str(dest), bin_dir=helper_bin).returncode == 0 and (dest / "build.o").exists()
    (dest / ".wheelhouse-source").write_text("an older archive\n")
    assert _helper(house, name, str(dest), bin_dir=helper_bin).returncode == 0
    assert not (dest / "build.o").exists() and (dest / "setup.py").read_text() == f"# {name}\n"


@pytest.mark.parametrize("vendor", GPU)
def test_make_passes_the_wheelhouse_to_the_gpu_builds(vendor):
    digest = "sha256:" + "1" * 64
    pins = [f"{key}={value.split('@')[0]}@{digest}" for key, value in STACK.items() if key.endswith("_BASE")]
    result = subprocess.run(["make", "-s", f"image-{vendor}", "DOCKER=echo", "WHEELHOUSE=dist/wheelhouse", *pins],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    runtime = result.stdout.splitlines()[0]
    assert f"-f Dockerfile.{vendor} --target runtime" in runtime
    assert f"--build-context wheelhouse={ROOT}/dist/wheelhouse --build-arg WHEELHOUSE=1" in runtime
