"""Dockerfile.rocm and Dockerfile.cuda built here, every stage in order, from the real files (issue 20).

No image registry is reachable, so the vendor bases are stand-ins made locally by scripts/ci/docker-gpu-standins.sh
(Ubuntu 22.04 from Ubuntu's packages, plus a signed local apt repository standing in for AMD's and NVIDIA's, which
provides /opt/rocm, hipconfig, roc-obj-ls, nvcc, cuobjdump). The one change to the Dockerfiles is the inside of
each vendor compile: `pip wheel --no-build-isolation` (FlashAttention, bitsandbytes) becomes `ckit-standin-wheel
--no-build-isolation` with the same arguments, environment and source tree, writing wheels named as the real build
names them (tests/images/standin/ckit_standin_wheel.py). The test fails when the derived file differs from the real
one anywhere else, or when BuildKit's log lacks any step of any stage.

ROCm is built in both positions of stack.env's ROCM_TORCH switch, both on the air-gapped path (WHEELHOUSE=1), at once
and sharing their base layers: the lock wheels are the real ones (downloaded by hash); the PyTorch, FlashAttention
and bitsandbytes archives are stand-in source trees (GitHub is not reachable) named by the pinned commits. With
`source` (the default) the torch compile is the third stood-in `pip wheel` and writes torch-2.3.1; with `prebuilt`
torch 2.4.1+rocm6.1 and pytorch-triton-rocm are stand-in wheels (PyTorch's index is not reachable: only their
version strings are real) and the build runs from a copy of the checkout whose index lock holds their sha256. CUDA takes the default path: torch 2.3.1 and its nvidia-* wheels from
PyPI by hash, the FlashAttention sdist downloaded and sha256-checked, all real. docs/images.md has the table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from kit.digest import sha256_file

from .dockerfiles import DOCKERFILES, ROCM_TORCH_VERSIONS, ROOT, STACK, from_lines, instructions
from .test_wheelhouse_build import wheelhouse

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCRIPT = ROOT / "scripts" / "ci" / "docker-gpu-standins.sh"
SYSTEM_CA = Path(os.environ.get("CKIT_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
COMPILE, STANDIN_COMPILE = "pip wheel --no-build-isolation", "ckit-standin-wheel --no-build-isolation"
COMPILES = {"rocm": 3, "cuda": 1}  # ROCm: torch (ROCM_TORCH=source), FlashAttention, bitsandbytes
# The stand-in torch's torch.version.hip: HIP 6.1.2's version string; its major.minor is the wheel's +rocm6.1.
STANDIN_HIP = "6.1.40093-bd86f1708"
PY_TAG = "cp310-cp310-linux_x86_64"


def run(args: list[str], timeout: int = 1800, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def only_compiles_differ(real: str, derived: str, compiles: int) -> None:
    before, after = instructions(real), instructions(derived)
    assert [(i.line, i.keyword) for i in before] == [(i.line, i.keyword) for i in after], "an instruction moved"
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == compiles, f"{len(changed)} instructions changed, {compiles} compiles expected"
    for b, a in changed:
        assert b.keyword == "RUN" and a.args == b.args.replace(COMPILE, STANDIN_COMPILE), f"line {b.line} changed"


def derive(vendor: str, folder: Path) -> Path:
    """Dockerfile.<vendor> with only the compile invocations swapped; fails on any other difference."""
    real = DOCKERFILES[vendor].read_text()
    assert real.count(COMPILE) == COMPILES[vendor], f"Dockerfile.{vendor}: expected {COMPILES[vendor]} compiles"
    derived = real.replace(COMPILE, STANDIN_COMPILE)
    only_compiles_differ(real, derived, COMPILES[vendor])
    path = folder / f"Dockerfile.{vendor}"
    path.write_text(derived)
    return path


def expected_steps(vendor: str) -> dict[str, int]:
    """stage -> the number of BuildKit steps it has (FROM of an image, COPY, ADD, RUN)."""
    steps: dict[str, int] = {}
    stage = None
    names = {f.stage for f in from_lines(DOCKERFILES[vendor].read_text())}
    for item in instructions(DOCKERFILES[vendor].read_text()):
        if item.keyword == "FROM":
            words = [w for w in item.args.split() if not w.startswith("--")]
            stage = words[2]
            # A stage picked by a switch (torch-${ROCM_TORCH}) is a stage of this file, not an image.
            prefix = words[0].split("${")[0]
            local = words[0] in names or words[0] == "scratch" or bool(prefix and any(n.startswith(prefix) for n in names))
            steps[stage] = 0 if local else 1
        elif stage and item.keyword in ("COPY", "ADD", "RUN"):
            steps[stage] += 1
    return steps


def steps_in_log(log: str) -> dict[str, set[tuple[int, int]]]:
    seen: dict[str, set[tuple[int, int]]] = {}
    for stage, index, total in re.findall(r"^#\d+ \[([\w-]+) (\d+)/(\d+)\]", log, re.M):
        seen.setdefault(stage, set()).add((int(index), int(total)))
    return seen


def assert_every_step_ran(vendor: str, log: str, skipped: set[str]) -> None:
    seen = steps_in_log(log)
    for stage, count in expected_steps(vendor).items():
        if stage in skipped or count == 0:
            continue
        # BuildKit numbers a stage's steps i/n, its base image as step 1 when that is an image (not a stage).
        got = seen.get(stage, set())
        assert {total for _, total in got} == {count}, f"Dockerfile.{vendor} {stage}: {sorted(got)} in the log, " \
            f"{count} steps in the file"
        assert {index for index, _ in got} == set(range(1, count + 1)), f"{stage}: ran {sorted(got)} of {count}"


@pytest.fixture(scope="module")
def standins(docker_client) -> dict[str, str]:
    result = run(["bash", str(SCRIPT)])
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def repository(standins):
    """The stand-in vendor apt repository on loopback, while the builds run (their apt-get update reads it)."""
    server = subprocess.Popen(["bash", str(SCRIPT), "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", int(standins["PORT"])), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    yield standins
    server.terminate()
    server.wait(timeout=30)


def write_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {PY_TAG}\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    path = folder / f"{name}-{version}-{PY_TAG}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def standin_torch_wheels(folder: Path) -> list[Path]:
    """torch and pytorch-triton-rocm as PyTorch's ROCm index names them, holding only their version strings."""
    torch_version = ROCM_TORCH_VERSIONS["prebuilt"]
    assert STANDIN_HIP.startswith(re.search(r"\+rocm(\d+\.\d+)", torch_version).group(1))
    torch = write_wheel(folder, "torch", torch_version, {
        "torch/__init__.py": '"""Stand-in: version strings of PyTorch\'s ROCm wheel only."""\nfrom . import version\n'
                             "__version__ = version.__version__\n",
        "torch/version.py": f"__version__ = {torch_version!r}\nhip = {STANDIN_HIP!r}\ncuda = None\n"})
    return [torch, write_wheel(folder, "pytorch_triton_rocm", STACK["ROCM_TRITON_VERSION"],
                               {"triton/__init__.py": f"__version__ = {STACK['ROCM_TRITON_VERSION']!r}\n"})]


def standin_source(folder: Path, name: str, ref: str, package: str, version: str) -> None:
    """A source archive named as scripts/airgap/wheelhouse.py names the pinned commit's archive."""
    tree = folder / f"tree-{name}"
    (tree / package).mkdir(parents=True)
    (tree / package / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (tree / "STANDIN").write_text(f"stand-in source tree for {name} at {ref}: GitHub is not reachable from CI\n")
    if name == "flash-attention":
        (tree / "csrc" / "composable_kernel").mkdir(parents=True)
        (tree / "csrc" / "composable_kernel" / "STANDIN").write_text("stand-in submodule\n")
    if name == "bitsandbytes":
        # The build stage's check runs bitsandbytes' own library-naming code from the wheel (check_extensions.py
        # reads these files): the real files of the bitsandbytes installed with the tests (its naming rule for ROCm
        # is 0.48.2's: libbitsandbytes_rocm<hip major.minor>.so; test_extension_abi.py runs it on both torch positions).
        installed = Path(importlib.util.find_spec("bitsandbytes").submodule_search_locations[0])
        for module in ("consts.py", "cuda_specs.py", "cextension.py"):
            shutil.copy(installed / module, tree / package / module)
    if name == "pytorch":  # what the torch-compile stage reads: version.txt, the hipify script, submodules
        (tree / "version.txt").write_text(f"{version}\n")
        (tree / "tools" / "amd_build").mkdir(parents=True)
        (tree / "tools" / "amd_build" / "build_amd.py").write_text(
            "# stand-in for PyTorch's hipify script: marks the tree as hipified\n"
            "open('STANDIN-hipified', 'w').write('hipified\\n')\n")
        (tree / "third_party" / "kineto").mkdir(parents=True)
        (tree / "third_party" / "kineto" / "STANDIN").write_text("stand-in submodule\n")
    archive = wheelhouse.git_archive_name(name, ref)
    wheelhouse.deterministic_tar_gz(tree, folder / archive, archive[:-len(".tar.gz")])
    shutil.rmtree(tree)


@pytest.fixture(scope="module")
def rocm_wheelhouse(standins, tmp_path_factory) -> Path:
    house = tmp_path_factory.mktemp("rocm-wheelhouse")
    cache = Path(standins["WORK"]) / "rocm-lock-wheels"  # files pinned by sha256 in the locks: fetched once
    locks = ("image-rocm-torch.lock", "image-build.lock", "image-rocm-torch-build.lock")
    # The marker names the locks' content: a cache filled for other locks (an added lock, a moved pin) is refilled.
    key = "\n".join(f"{lock} {sha256_file(ROOT / 'requirements' / lock)}" for lock in locks)
    done = cache / ".done"
    if not done.is_file() or done.read_text() != key:
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        for lock in locks:
            wheelhouse.download_lock(ROOT / "requirements" / lock, cache, "3.10", None)
        done.write_text(key)
    shutil.copytree(cache, house / "wheels", ignore=shutil.ignore_patterns(".done"))
    standin_torch_wheels(house / "wheels")
    (house / "sources").mkdir()
    standin_source(house / "sources", "pytorch", STACK["ROCM_TORCH_REF"], "torch", ROCM_TORCH_VERSIONS["source"])
    standin_source(house / "sources", "flash-attention", STACK["ROCM_FLASH_ATTN_REF"], "flash_attn", "2.6.2")
    standin_source(house / "sources", "bitsandbytes", STACK["ROCM_BNB_REF"], "bitsandbytes", STACK["ROCM_BNB_VERSION"])
    wheelhouse.write_sums(house)
    return house


def make_args(vendor: str, standins: dict[str, str], dockerfile: Path, dist: Path, house: Path | None,
              position: str | None = None) -> list[str]:
    """What a user passes to `make wheels-<vendor>` / `make image-<vendor>`, with the stand-in bases."""
    bases = ([f"ROCM_BASE={standins['ROCM_DEV']}", f"ROCM_RUNTIME_BASE={standins['JAMMY']}"] if vendor == "rocm"
             else [f"CUDA_DEVEL_BASE={standins['CUDA_DEVEL']}", f"CUDA_RUNTIME_BASE={standins['JAMMY']}"])
    switch = [f"ROCM_TORCH={position}"] if position else []
    return [*bases, *switch, f"CA_BUNDLE={SYSTEM_CA}", f"DIST={dist}", *([f"WHEELHOUSE={house}"] if house else []),
            # -f again: buildx takes the last one, so make's own command line is kept whole otherwise.
            f"BUILD_FLAGS=-f {dockerfile} --network host --progress plain"]


def runtime_command(vendor: str, args: list[str], tag: str, context: Path = ROOT) -> list[str]:
    """make's own buildx command line for `wheels-<vendor>`, aimed at the runtime stage (it needs every other one)."""
    printed = run(["make", "-s", f"wheels-{vendor}", "DOCKER=echo", *args], cwd=context)
    assert printed.returncode == 0, printed.stderr
    command = shlex.split(printed.stdout.strip().splitlines()[-1])
    target = command.index("--target")
    command[target + 1] = "runtime"
    output = command.index("--output")
    command[output:output + 2] = ["--load", "-t", tag]
    return ["docker", *command]


def in_image(tag: str, script: str) -> str:
    result = run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "bash", tag, "-c", script], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def prebuilt_context(folder: Path, house: Path) -> Path:
    """The checkout (git's files) with requirements/image-rocm-torch-index.txt filled with the sha256 of the stand-in
    torch and triton wheels, as a site fills the placeholders from the real files: the ROCM_TORCH=prebuilt build
    refuses placeholders by design (test_stack_tools.py tests that refusal), so it builds from this copy."""
    context = folder / "context"
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    index = context / "requirements" / "image-rocm-torch-index.txt"
    text = index.read_text()
    for wheel in (f"torch-{ROCM_TORCH_VERSIONS['prebuilt']}-{PY_TAG}.whl",
                  f"pytorch_triton_rocm-{STACK['ROCM_TRITON_VERSION']}-{PY_TAG}.whl"):
        digest = hashlib.sha256((house / "wheels" / wheel).read_bytes()).hexdigest()
        text = text.replace("sha256:" + "0" * 64, "sha256:" + digest, 1)
    index.write_text(text)
    return context


# name -> (Dockerfile vendor, ROCM_TORCH position): both switch positions of the ROCm file, and CUDA.
BUILDS = {"rocm": ("rocm", "source"), "rocm-prebuilt": ("rocm", "prebuilt"), "cuda": ("cuda", None)}


@pytest.fixture(scope="module")
def gpu_builds(repository, rocm_wheelhouse, tmp_path_factory) -> dict[str, dict]:
    """Every runtime build at once (CUDA's mostly waits on PyPI, ROCm's on the CPU; the two ROCm positions share
    their base layers), then every wheel export."""
    builds: dict[str, dict] = {}
    try:
        for name, (vendor, position) in BUILDS.items():
            folder = tmp_path_factory.mktemp(name)
            house = rocm_wheelhouse if vendor == "rocm" else None
            context = prebuilt_context(folder, house) if position == "prebuilt" else ROOT
            args = make_args(vendor, repository, derive(vendor, folder), folder / "dist", house, position)
            tag = f"{repository['JAMMY'].split('/')[0]}/gpu-build-test:{name}"
            with open(folder / "build.log", "w") as log:
                process = subprocess.Popen(runtime_command(vendor, args, tag, context), cwd=context,
                                           stdout=subprocess.DEVNULL, stderr=log)
            builds[name] = {"tag": tag, "args": args, "process": process, "log": folder / "build.log",
                            "wheels": folder / "dist" / f"wheels-{vendor}", "context": context,
                            "vendor": vendor, "position": position}
        for name, build in builds.items():
            code = build["process"].wait(timeout=3000)
            build["log"] = build["log"].read_text()
            assert code == 0, f"Dockerfile.{build['vendor']} ({name}):\n{build['log'][-6000:]}"
    finally:
        for build in builds.values():
            if build["process"].poll() is None:
                build["process"].terminate()
    for build in builds.values():
        exported = run(["make", "-s", f"wheels-{build['vendor']}", *build["args"]], cwd=build["context"])
        assert exported.returncode == 0, exported.stderr[-4000:]
    return builds


@pytest.fixture(scope="module", params=["source", "prebuilt"])
def rocm_build(gpu_builds, request) -> dict:
    return gpu_builds["rocm" if request.param == "source" else "rocm-prebuilt"]


@pytest.fixture(scope="module")
def cuda_build(gpu_builds) -> dict:
    return gpu_builds["cuda"]


def test_the_derived_dockerfiles_differ_only_in_the_compile_invocations(tmp_path):
    for vendor in ("rocm", "cuda"):
        derive(vendor, tmp_path)  # asserts inside
    real = DOCKERFILES["rocm"].read_text()
    swapped = real.replace(COMPILE, STANDIN_COMPILE)
    for other in (swapped.replace("COPY docker/fetch-git-ref.sh", "COPY docker/other.sh"),
                  swapped.replace("hipconfig --version", "echo 6.1"), swapped.replace("RUN python /usr/local", "#")):
        with pytest.raises(AssertionError):
            only_compiles_differ(real, other, COMPILES["rocm"])


def test_a_log_missing_a_step_fails(tmp_path):
    # The shape of BuildKit's plain log, with every step of Dockerfile.cuda, then with one of them left out.
    lines = [f"#{n} [{stage} {i}/{count}] step" for n, (stage, count) in enumerate(expected_steps("cuda").items())
             for i in range(1, count + 1)]
    assert_every_step_ran("cuda", "\n".join(lines), skipped=set())
    for missing in ("[build 5/", "[runtime-os 1/", "[wheels 1/"):
        with pytest.raises(AssertionError):
            assert_every_step_ran("cuda", "\n".join(line for line in lines if missing not in line), skipped=set())


# The stages of the other ROCM_TORCH position, which BuildKit does not run.
NOT_IN = {"source": {"torch-prebuilt", "torch-wheel-prebuilt"},
          "prebuilt": {"torch-compile", "torch-wheel-source", "torch-source"}}


def test_rocm_every_stage_and_step_ran(rocm_build):
    # The wheelhouse stage is the build context given with WHEELHOUSE=DIR: no steps of its own.
    assert_every_step_ran("rocm", rocm_build["log"], skipped={"wheelhouse"} | NOT_IN[rocm_build["position"]])
    for stage in NOT_IN[rocm_build["position"]]:
        assert stage not in steps_in_log(rocm_build["log"]), f"{stage} ran with ROCM_TORCH={rocm_build['position']}"


def test_cuda_every_stage_and_step_ran(cuda_build):
    assert_every_step_ran("cuda", cuda_build["log"], skipped={"wheelhouse"})


def test_rocm_wheels_are_named_as_the_real_build_names_them(rocm_build):
    names = sorted(p.name for p in rocm_build["wheels"].iterdir())
    # `make wheels-rocm` exports the compiled torch with the extensions (WHEELS= then skips its compile too).
    torch = [f"torch-{ROCM_TORCH_VERSIONS['source']}-{PY_TAG}.whl"] if rocm_build["position"] == "source" else []
    assert names == [f"bitsandbytes-{STACK['ROCM_BNB_VERSION']}-{PY_TAG}.whl", f"flash_attn-2.6.2-{PY_TAG}.whl", *torch]
    with zipfile.ZipFile(rocm_build["wheels"] / names[0]) as archive:
        assert "bitsandbytes/libbitsandbytes_rocm61.so" in archive.namelist()
    if torch:
        with zipfile.ZipFile(rocm_build["wheels"] / torch[0]) as archive:
            version = archive.read("torch/version.py").decode()
            assert f"hip = {STANDIN_HIP!r}" in version and "cuda = None" in version
            assert "torch/lib/libtorch_hip.so" in archive.namelist()


def test_cuda_wheel_is_named_as_the_real_build_names_it(cuda_build):
    names = sorted(p.name for p in cuda_build["wheels"].iterdir())
    assert names == [f"flash_attn-{STACK['CUDA_FLASH_ATTN_VERSION']}-{PY_TAG}.whl"]
    with zipfile.ZipFile(cuda_build["wheels"] / names[0]) as archive:
        assert "flash_attn_2_cuda.cpython-310-x86_64-linux-gnu.so" in archive.namelist()
        assert "flash_attn/bert_padding.py" in archive.namelist(), "the real sdist's Python files are in the wheel"


def test_rocm_runtime_image(rocm_build, docker_client):
    torch_version = ROCM_TORCH_VERSIONS[rocm_build["position"]]
    config = docker_client.images.get(rocm_build["tag"]).attrs["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["ROCM_PATH"] == "/opt/rocm" and env["LD_LIBRARY_PATH"] == "/opt/rocm/lib"
    assert env["PATH"].startswith("/opt/venv/bin:/opt/rocm/bin:") and "DEBIAN_FRONTEND" not in env
    labels = config["Labels"]
    assert labels["io.github.clinical-finetune-kit.torch"] == torch_version
    assert labels["io.github.clinical-finetune-kit.gpu-archs"] == STACK["ROCM_GPU_ARCHS"]
    info = json.loads(in_image(rocm_build["tag"], "cat /etc/clinical-finetune-kit/build.json"))
    assert info["vendor"] == "rocm" and info["torch_version"] == torch_version
    assert info["rocm_version"] == STACK["ROCM_VERSION"] and info["hip_version"] == STANDIN_HIP
    assert info["gpu_archs"] == STACK["ROCM_GPU_ARCHS"].split(";")
    assert info["flash_attn_version"] == "2.6.2" and info["bitsandbytes_version"] == STACK["ROCM_BNB_VERSION"]
    packages = in_image(rocm_build["tag"], "dpkg-query -W -f '${Package}\\n' | sort; python3.10 --version; "
                        "ls /opt/venv/lib/python3.10/site-packages/bitsandbytes/")
    for name in ("hip-runtime-amd", "hipblaslt", "rocblas", "rocm-smi-lib", "rocminfo", "python3.10", "ca-certificates"):
        assert f"\n{name}\n" in f"\n{packages}", f"{name} is not installed in the runtime image"
    assert "libbitsandbytes_rocm61.so" in packages and "hip-dev" not in packages.split()
    # A source-built torch links the system ROCm libraries; PyTorch's wheel bundles its own (docs/images.md).
    # (rocSPARSE, rocBLAS, rocRAND come in either way, as dependencies of the hip* wrappers bitsandbytes links.)
    for name in ("miopen-hip", "rccl", "hipfft", "rocfft", "hipsolver", "rocsolver", "roctracer"):
        assert (f"\n{name}\n" in f"\n{packages}") == (rocm_build["position"] == "source"), name
    versions = in_image(rocm_build["tag"], "python -c 'import torch; print(torch.__version__, torch.version.hip)'")
    assert versions.split() == [torch_version, STANDIN_HIP]


def test_cuda_runtime_image(cuda_build, docker_client):
    config = docker_client.images.get(cuda_build["tag"]).attrs["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["PATH"].startswith("/opt/venv/bin:")
    assert "DEBIAN_FRONTEND" not in env
    assert config["Labels"]["io.github.clinical-finetune-kit.cuda"] == STACK["CUDA_VERSION"]
    info = json.loads(in_image(cuda_build["tag"], "cat /etc/clinical-finetune-kit/build.json"))
    assert info["vendor"] == "cuda" and info["torch_version"].startswith(STACK["CUDA_TORCH_VERSION"])
    assert info["cuda_version"] == "12.1" and info["gpu_archs"] == STACK["CUDA_ARCH_LIST"].split(";")
    assert info["flash_attn_version"] == STACK["CUDA_FLASH_ATTN_VERSION"]
    versions = in_image(cuda_build["tag"], "python -c 'import torch; print(torch.__version__, torch.version.cuda)'")
    assert versions.split() == [f"{STACK['CUDA_TORCH_VERSION']}+cu121", "12.1"]  # PyPI's wheel: the CUDA 12.1 build
