"""Static checks of the Dockerfiles: one app stage, stack.env as the only source of versions, digests, and the
conventions hadolint cannot see."""

from __future__ import annotations

import re
import subprocess

import pytest

from .dockerfiles import (
    APP_DOCKERFILE,
    DOCKERFILES,
    PLACEHOLDER_DIGEST,
    ROOT,
    STACK,
    from_lines,
    instructions,
    unpinned_bases,
)

TEXT = {vendor: path.read_text() for vendor, path in DOCKERFILES.items()}
APP = APP_DOCKERFILE.read_text()
ALL_TEXT = {**TEXT, "app": APP}


def test_the_app_stage_exists_once():
    # CI builds and runs Dockerfile.app on the CPU runtime; the GPU images get that very file, not a copy.
    for vendor, text in TEXT.items():
        stages = [f.stage for f in from_lines(text)]
        assert "app" not in stages, f"Dockerfile.{vendor} has its own app stage: the app stage is Dockerfile.app"
        assert stages[-1] == "runtime", f"{vendor}: the runtime stage must be last, got {stages}"
    assert "COPY pipeline/ pipeline/" in APP
    # Besides the app stage, only the empty default of the `wheelhouse` build context (docs/airgap.md).
    *contexts, app = from_lines(APP, {})
    assert [(c.stage, c.reference) for c in contexts] == [("wheelhouse", "scratch")]
    assert app.stage == "app" and "RUNTIME_IMAGE" in app.reference


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_make_builds_the_vendor_runtime_then_the_one_app_stage(vendor):
    digest = "sha256:" + "1" * 64
    pins = [f"{key}={value.split('@')[0]}@{digest}" for key, value in STACK.items() if key.endswith("_BASE")]
    result = subprocess.run(["make", "-s", f"image-{vendor}", "DOCKER=echo", "TAG=t", *pins], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    runtime, app = result.stdout.strip().splitlines()
    assert f"-f Dockerfile.{vendor} --target runtime" in runtime and f"clinical-finetune-kit-runtime:t-{vendor}" in runtime
    assert "-f Dockerfile.app" in app and f"RUNTIME_IMAGE=clinical-finetune-kit-runtime:t-{vendor}" in app
    assert f"IMAGE_LOCK=image-{vendor}.lock" in app and f"-t clinical-finetune-kit:t-{vendor}" in app


def _args_used(text: str) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_every_version_comes_from_stack_env(vendor):
    # The Dockerfiles declare their stack ARGs without a default, and the Makefile passes exactly those keys.
    items = instructions(TEXT[vendor])
    declared = {i.args.split("=")[0].strip() for i in items if i.keyword == "ARG"}
    stack_args = {name for name in declared if name in STACK}
    assert stack_args, f"Dockerfile.{vendor} reads nothing from stack.env"
    for item in items:
        if item.keyword == "ARG" and item.args.split("=")[0].strip() in STACK:
            assert "=" not in item.args, f"Dockerfile.{vendor} line {item.line}: {item.args} has a default: stack.env has it"
    unknown = {name for name in declared if not name.startswith("ROCM_") and not name.startswith("CUDA_")
               and not name.startswith("CPU_")} - {"DEBIAN_FRONTEND", "MAX_JOBS", "WHEELHOUSE"}
    assert not unknown, f"Dockerfile.{vendor}: build arguments outside stack.env: {unknown}"
    result = subprocess.run(["make", "-s", "-p", "-n", "help"], cwd=ROOT, capture_output=True, text=True)
    keys = re.search(rf"^{vendor.upper()}_KEYS = (.*)$", result.stdout, re.M).group(1).split()
    assert set(keys) == stack_args, f"Makefile {vendor.upper()}_KEYS differs from Dockerfile.{vendor}'s ARGs"
    assert set(keys) <= set(STACK)


@pytest.mark.parametrize("vendor", sorted(ALL_TEXT))
def test_a_direct_docker_build_fails_at_its_first_line(vendor):
    # No defaults: `docker build -f Dockerfile.x .` stops at the first FROM with a message naming make/stack.env.
    # A stage picked by a switch (ROCm's torch-${ROCM_TORCH}) carries the same message.
    for item in from_lines(ALL_TEXT[vendor], {}):
        if "$" in item.reference:
            assert re.fullmatch(r"[\w-]*\$\{\w+:\?unset:build_through_make\S*stack\.env\}", item.reference), item.reference


def test_stack_env_holds_every_pin_the_images_need():
    assert STACK["ROCM_VERSION"].startswith("6.1.")
    assert set(STACK["ROCM_GPU_ARCHS"].split(";")) == {"gfx90a", "gfx942"}
    for key in ("ROCM_FLASH_ATTN_REF", "ROCM_BNB_REF", "ROCM_TORCH_REF"):
        assert re.fullmatch(r"[0-9a-f]{40}", STACK[key]), f"{key} must be a commit"
    assert STACK["CUDA_VERSION"].startswith("12.") and STACK["CUDA_TORCH_VERSION"].startswith("2.3.")
    assert set(STACK["CUDA_ARCH_LIST"].split(";")) == {"8.0", "9.0"}
    assert re.fullmatch(r"[0-9a-f]{64}", STACK["CUDA_FLASH_ATTN_SHA256"])


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_every_base_image_is_pinned_by_digest(vendor):
    # The ROCm base's digest could not be verified where this was written: an all-zero placeholder that
    # `make image-rocm` refuses (test_make_refuses_the_placeholder_digest). No other file may use it.
    problems = unpinned_bases(TEXT[vendor], allow_placeholder=(vendor == "rocm"))
    assert len(from_lines(TEXT[vendor])) >= 3
    assert not problems, f"Dockerfile.{vendor}: " + "; ".join(problems)


def test_digest_check_catches_unpinned_and_unknown_bases():
    text = (
        "ARG BASE=ubuntu:22.04\n"
        "ARG GOOD=debian:bookworm-slim@sha256:" + "a" * 64 + "\n"
        "FROM ${BASE} AS one\n"
        "FROM ${GOOD} AS two\n"
        "FROM two AS three\n"
        "FROM python:3.11\n"
        "FROM ${NOT_DECLARED}\n"
        "FROM scratch\n"
        "FROM ubuntu:22.04" + PLACEHOLDER_DIGEST + "\n"
    )
    problems = unpinned_bases(text)
    assert len(problems) == 4, problems
    assert "ubuntu:22.04 is not pinned" in problems[0]
    assert "python:3.11 is not pinned" in problems[1]
    assert "NOT_DECLARED" in problems[2]
    assert "placeholder" in problems[3]


def test_make_refuses_the_placeholder_digest():
    result = subprocess.run(["make", "-s", "image-rocm", "DOCKER=false"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "ROCM_BASE" in result.stderr and "placeholder digest" in result.stderr
    assert "make resolve-digests" in result.stderr and "imagetools inspect" in result.stderr


def test_make_builds_rocm_once_a_digest_is_given():
    digest = "rocm/dev-ubuntu-22.04:6.1.2@sha256:" + "1" * 64
    result = subprocess.run(["make", "-s", "image-rocm", "DOCKER=echo", f"ROCM_BASE={digest}",
                             "ROCM_GPU_ARCHS=gfx942"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"--build-arg ROCM_BASE={digest}" in result.stdout
    assert "--build-arg ROCM_GPU_ARCHS=gfx942" in result.stdout
    assert f"--build-arg ROCM_TORCH_VERSION={STACK['ROCM_TORCH_VERSION']}" in result.stdout
    assert f"--build-arg ROCM_TORCH={STACK['ROCM_TORCH']}" in result.stdout
    prebuilt = subprocess.run(["make", "-s", "image-rocm", "DOCKER=echo", f"ROCM_BASE={digest}", "ROCM_TORCH=prebuilt",
                               "WHEELS=dist/w"], cwd=ROOT, capture_output=True, text=True)
    assert f"--build-arg ROCM_TORCH_VERSION={STACK['ROCM_TORCH_PREBUILT_VERSION']}" in prebuilt.stdout
    # Exported wheels replace the compiled torch's stage too (the one switch position that has one).
    assert f"--build-context torch-wheel={ROOT / 'dist' / 'w'}" in prebuilt.stdout
    wrong = subprocess.run(["make", "-s", "help", "ROCM_TORCH=wheel"], cwd=ROOT, capture_output=True, text=True)
    assert wrong.returncode != 0 and "ROCM_TORCH must be source or prebuilt" in wrong.stderr
    assert "MAX_JOBS" not in result.stdout, "an unset MAX_JOBS must leave FlashAttention's memory-aware default"


def test_make_reuses_exported_wheels_through_a_named_context():
    result = subprocess.run(["make", "-s", "image-cuda", "DOCKER=echo", "WHEELS=dist/wheels-cuda"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"--build-context wheels={ROOT}/dist/wheels-cuda" in result.stdout
    # ... which replaces the stage of that name, so the compile stage is not needed.
    for vendor in ("rocm", "cuda"):
        assert any(f.stage == "wheels" for f in from_lines(TEXT[vendor]))


@pytest.mark.parametrize("vendor", sorted(ALL_TEXT))
def test_apt_and_pip_conventions(vendor):
    # hadolint does not look inside `with-build-secrets ...`, so these are checked here.
    for item in instructions(ALL_TEXT[vendor]):
        if item.keyword != "RUN":
            continue
        if "apt-get install" in item.args:
            assert "--no-install-recommends" in item.args, f"line {item.line}: apt-get install without it"
            assert "rm -rf /var/lib/apt/lists/*" in item.args, f"line {item.line}: apt lists left in the layer"
        for command in re.findall(r"pip (?:install|wheel)[^&;]*", item.args):
            hashed = "--require-hashes" in command and " -r " in command
            local = "--no-deps" in command and ("/wheels" in command or "--wheel-dir" in command
                                                or ("--no-index" in command and '.whl"' in command))
            exact = "--no-deps" in command and re.search(r'"\w[\w-]*==\$\{\w+\}"', command)
            built = "--no-deps" in command and "--no-build-isolation" in command and "--wheel-dir /wheels" in command
            assert hashed or local or exact or built, f"Dockerfile.{vendor} line {item.line}: unpinned pip: {command}"


@pytest.mark.parametrize("vendor", sorted(ALL_TEXT))
def test_secrets_only_through_buildkit_secret_mounts(vendor):
    for item in instructions(ALL_TEXT[vendor]):
        if item.keyword in ("ARG", "ENV", "LABEL"):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|CA_BUNDLE|CERT", item.args, re.I), (
                f"Dockerfile.{vendor} line {item.line}: a secret-looking {item.keyword} would land in the image")
        if item.keyword == "COPY":
            assert not re.search(r"\.pem|\.crt|token", item.args, re.I), f"line {item.line}: copies a secret"
    # Every step that may reach the network gets the CA bundle through the wrapper.
    for item in instructions(ALL_TEXT[vendor]):
        if item.keyword == "RUN" and re.search(r"with-build-secrets", item.args):
            assert "--mount=type=secret,id=ca_bundle" in item.args, f"line {item.line}: no ca_bundle mount"
            assert "--mount=type=tmpfs,target=/run/ckit" in item.args, f"line {item.line}: no tmpfs for the bundle"


def test_labels_and_non_root_user():
    for label in ("org.opencontainers.image.source", "org.opencontainers.image.revision",
                  "org.opencontainers.image.version"):
        assert label in APP
    users = [i.args for i in instructions(APP) if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_no_build_only_setting_stays_in_the_image(vendor):
    for item in instructions(TEXT[vendor]):
        if item.keyword == "ENV":
            assert "DEBIAN_FRONTEND" not in item.args, f"Dockerfile.{vendor} line {item.line}: use ARG, not ENV"
        if item.keyword == "LABEL" and "base.name" in item.args:
            assert re.search(r'base\.name="\$\{\w+_BASE\}"', item.args), "base.name must name the base actually used"


def test_network_steps_run_inside_the_ca_wrapper():
    # A partial clone (--filter=blob:none) fetches blobs at checkout, outside the wrapper: not allowed.
    for vendor, text in ALL_TEXT.items():
        for item in instructions(text):
            if item.keyword != "RUN":
                continue
            assert "--filter=blob" not in item.args, f"Dockerfile.{vendor} line {item.line}: partial clone"
            for command in ("git clone", "git fetch", "submodule update", "fetch-git-ref", "urlretrieve"):
                for segment in item.args.split("&&"):
                    if command in segment:
                        assert "with-build-secrets" in segment, f"Dockerfile.{vendor} line {item.line}: {segment}"


def test_rocm_runtime_gets_a_ca_store_before_any_https_repository():
    runs = [i for i in instructions(TEXT["rocm"]) if i.keyword == "RUN"]
    first_ca = next(n for n, i in enumerate(runs) if "ca-certificates" in i.args and "base-apt" not in i.args
                    and "hip-runtime-amd" not in i.args and "python3.10-venv" not in i.args)
    amd = next(n for n, i in enumerate(runs) if "/tmp/base-apt" in i.args)
    assert first_ca < amd


def test_bitsandbytes_build_gets_hipblaslt():
    # CMake links roc::hipblaslt for HIP >= 6.1 after a find_package(hipblaslt) that is not REQUIRED.
    assert re.search(r"apt-get install[^&]*hipblaslt-dev", TEXT["rocm"])
    assert re.search(r"apt-get install[^&]*\bhipblaslt\b", TEXT["rocm"].split("AS runtime-os")[1])


def test_cuda_flash_attn_build_has_git():
    build = TEXT["cuda"].split("AS build")[1].split("AS wheels")[0]
    assert re.search(r"apt-get install[^&]*\bgit\b", build)


def test_gpu_builds_prove_their_extensions():
    for vendor in ("rocm", "cuda"):
        assert f"check_extensions.py wheels --vendor {vendor}" in TEXT[vendor]
    assert "check_extensions.py imports" in APP


def test_make_passes_the_ca_bundle_as_a_buildkit_secret():
    result = subprocess.run(["make", "-s", "image-cpu", "DOCKER=echo", "CA_BUNDLE=/etc/ca.pem",
                             "TORCH_WHEELS=/opt/wheels", "CPU_BASE=local/base:1"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert "id=ca_bundle,src=/etc/ca.pem" in words
    assert words[words.index("id=ca_bundle,src=/etc/ca.pem") - 1] == "--secret"
    assert "--build-arg" in words and "CPU_BASE=local/base:1" in words
    assert "torch-wheels=/opt/wheels" in words and "CPU_TORCH_INDEX_URL=" in words
    assert "hf_token" not in result.stdout, "no build step needs a hub token"
