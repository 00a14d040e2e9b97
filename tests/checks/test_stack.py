"""checks/ against stack.env, the one file that says which GPUs and versions the images are built for.

The checks themselves compare against the image's build info (what that image was really built with, build
arguments included), never against stack.env; what must follow stack.env is what the checks and their docs
know about each GPU target.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from checks import thresholds as T
from checks.build_info import STACK_ARCH_KEYS, normalize_arch
from kit.stack import read_stack

ROOT = Path(__file__).resolve().parents[2]


def stack_gpu_targets() -> set[str]:
    stack = read_stack()
    return {normalize_arch(arch) for key in STACK_ARCH_KEYS.values() for arch in stack[key].split(";")}


def test_the_stack_keys_the_fix_hints_name_exist():
    stack = read_stack()
    missing = [key for key in STACK_ARCH_KEYS.values() if key not in stack]
    assert not missing, f"checks/build_info.py STACK_ARCH_KEYS names {missing}, which stack.env does not set"


def test_every_gpu_target_of_the_stack_has_a_matmul_floor():
    targets = stack_gpu_targets()
    assert targets >= {"gfx90a", "gfx942", "sm_80", "sm_90"}, targets  # MI250, MI300X, A100, H100/H200
    missing = targets - set(T.MATMUL_MIN_TFLOPS)
    assert not missing, (f"stack.env builds for {sorted(missing)}, but checks/thresholds.py MATMUL_MIN_TFLOPS has "
                         "no TFLOP/s floor for it: add one, with where the number comes from")


def test_the_docs_build_info_example_is_the_stack_rocm_image():
    text = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    section = text.split("## The image's build-info file", 1)[1]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    stack = read_stack()
    assert example["vendor"] == "rocm"
    assert example["rocm_version"] == stack["ROCM_VERSION"]
    assert example["torch_version"] == stack["ROCM_TORCH_VERSION"]
    assert example["gpu_archs"] == stack[STACK_ARCH_KEYS["rocm"]].split(";")
