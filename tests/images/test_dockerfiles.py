"""Static checks of the three Dockerfiles: shared app stage, digests, conventions hadolint cannot see."""

from __future__ import annotations

import re
import subprocess

import pytest

from .dockerfiles import (
    DOCKERFILES,
    PLACEHOLDER_DIGEST,
    ROOT,
    app_stage,
    from_lines,
    global_args,
    instructions,
    unpinned_bases,
)

TEXT = {vendor: path.read_text() for vendor, path in DOCKERFILES.items()}


def test_app_stage_is_identical_in_all_three_dockerfiles():
    # CI builds and runs the CPU file's app stage; this is what makes that evidence for the GPU images too.
    stages = {vendor: app_stage(text) for vendor, text in TEXT.items()}
    assert stages["rocm"] == stages["cpu"], "Dockerfile.rocm's app stage differs from Dockerfile.cpu's"
    assert stages["cuda"] == stages["cpu"], "Dockerfile.cuda's app stage differs from Dockerfile.cpu's"
    assert "COPY pipeline/ pipeline/" in stages["cpu"]


def test_app_stage_is_last_and_builds_on_runtime():
    for vendor, text in TEXT.items():
        stages = [f.stage for f in from_lines(text)]
        assert stages[-1] == "app", f"{vendor}: the app stage must be last, got {stages}"
        assert [f.resolved for f in from_lines(text)][-1] == "runtime"


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_every_base_image_is_pinned_by_digest(vendor):
    # The ROCm base's digest could not be verified where this was written: an all-zero placeholder that
    # `make image-rocm` refuses (test_make_refuses_the_placeholder_digest). No other file may use it.
    problems = unpinned_bases(TEXT[vendor], allow_placeholder=(vendor == "rocm"))
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
    assert "placeholder digest" in result.stderr and "imagetools inspect" in result.stderr


def test_make_builds_rocm_once_a_digest_is_given():
    digest = "rocm/dev-ubuntu-22.04:6.1.2@sha256:" + "1" * 64
    result = subprocess.run(["make", "-s", "image-rocm", "DOCKER=echo", f"ROCM_BASE={digest}", "GPU_ARCHS=gfx942"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"--build-arg ROCM_BASE={digest}" in result.stdout
    assert "--build-arg GPU_ARCHS=gfx942" in result.stdout
    assert "-f Dockerfile.rocm --target app" in result.stdout


def test_make_reuses_exported_wheels_through_a_named_context():
    result = subprocess.run(["make", "-s", "image-cuda", "DOCKER=echo", "WHEELS=dist/wheels-cuda"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"--build-context wheels={ROOT}/dist/wheels-cuda" in result.stdout
    # ... which replaces the stage of that name, so the compile stage is not needed.
    for vendor in ("rocm", "cuda"):
        assert any(f.stage == "wheels" for f in from_lines(TEXT[vendor]))


def test_gpu_build_arguments_default_to_the_users_pins():
    rocm = global_args(instructions(TEXT["rocm"]))
    assert rocm["ROCM_VERSION"].startswith("6.1.")
    assert rocm["TORCH_VERSION"].startswith("2.3.")
    assert set(rocm["GPU_ARCHS"].split(";")) == {"gfx90a", "gfx942"}
    assert re.fullmatch(r"[0-9a-f]{40}", rocm["FLASH_ATTN_REF"]), "FlashAttention must be pinned by commit"
    assert re.fullmatch(r"[0-9a-f]{40}", rocm["BNB_REF"]), "bitsandbytes must be pinned by commit"
    assert rocm["MAX_JOBS"].isdigit()
    cuda = global_args(instructions(TEXT["cuda"]))
    assert cuda["CUDA_VERSION"].startswith("12.")
    assert cuda["TORCH_VERSION"].startswith("2.3.")
    assert set(cuda["TORCH_CUDA_ARCH_LIST"].split(";")) == {"8.0", "9.0"}
    assert re.fullmatch(r"[0-9a-f]{64}", cuda["FLASH_ATTN_SHA256"])


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_apt_and_pip_conventions(vendor):
    # hadolint does not look inside `with-build-secrets ...`, so these are checked here.
    for item in instructions(TEXT[vendor]):
        if item.keyword != "RUN":
            continue
        if "apt-get install" in item.args:
            assert "--no-install-recommends" in item.args, f"line {item.line}: apt-get install without it"
            assert "rm -rf /var/lib/apt/lists/*" in item.args, f"line {item.line}: apt lists left in the layer"
        for command in re.findall(r"pip (?:install|wheel)[^&;]*", item.args):
            hashed = "--require-hashes" in command and " -r " in command
            local = "--no-deps" in command and ("/wheels" in command or "--wheel-dir" in command)
            exact = "--no-deps" in command and re.search(r'"\w[\w-]*==\$\{\w+\}"', command)
            assert hashed or local or exact, f"Dockerfile.{vendor} line {item.line}: unpinned pip: {command}"


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_secrets_only_through_buildkit_secret_mounts(vendor):
    for item in instructions(TEXT[vendor]):
        if item.keyword in ("ARG", "ENV", "LABEL"):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|CA_BUNDLE|CERT", item.args, re.I), (
                f"Dockerfile.{vendor} line {item.line}: a secret-looking {item.keyword} would land in the image")
        if item.keyword == "COPY":
            assert not re.search(r"\.pem|\.crt|token", item.args, re.I), f"line {item.line}: copies a secret"
    # Every step that may reach the network gets the CA bundle through the wrapper.
    for item in instructions(TEXT[vendor]):
        if item.keyword == "RUN" and re.search(r"with-build-secrets", item.args):
            assert "--mount=type=secret,id=ca_bundle" in item.args, f"line {item.line}: no ca_bundle mount"
            assert "--mount=type=tmpfs,target=/run/ckit" in item.args, f"line {item.line}: no tmpfs for the bundle"


@pytest.mark.parametrize("vendor", sorted(DOCKERFILES))
def test_labels_and_non_root_user(vendor):
    app = app_stage(TEXT[vendor])
    for label in ("org.opencontainers.image.source", "org.opencontainers.image.revision",
                  "org.opencontainers.image.version"):
        assert label in app
    users = [i.args for i in instructions(TEXT[vendor]) if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")


def test_make_passes_ca_bundle_and_token_as_buildkit_secrets():
    result = subprocess.run(["make", "-s", "image-cpu", "DOCKER=echo", "CA_BUNDLE=/etc/ca.pem",
                             "HF_TOKEN_FILE=/run/token", "TORCH_WHEELS=/opt/wheels", "CPU_BASE=local/base:1"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert "id=ca_bundle,src=/etc/ca.pem" in words and "id=hf_token,src=/run/token" in words
    assert words[words.index("id=ca_bundle,src=/etc/ca.pem") - 1] == "--secret"
    assert "--build-arg" in words and "CPU_BASE=local/base:1" in words
    assert "torch-wheels=/opt/wheels" in words and "TORCH_INDEX_URL=" in words
