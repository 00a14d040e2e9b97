"""Numeric precision: the one bf16 decision, the base weights' dtype, and autocast for the training step."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from pipeline.core.config import Recipe
from pipeline.core.errors import UnsupportedError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SHORT_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def gpu_has_bf16(device: torch.device) -> bool:
    """True on a GPU with bf16 support: where "auto" picks bf16 (on CPUs it picks fp32, see ``base_dtype``)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 can run on ``device`` at all (CPUs can; older GPUs cannot)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def base_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """The dtype of unquantized base weights: the recipe's, or bf16 on GPUs that have it and fp32 on CPUs
    (bf16 on a CPU trains ~20% faster but scores a little worse, and the demo model is small enough for fp32)."""
    if recipe.model.dtype != "auto":
        return DTYPES[recipe.model.dtype]
    return torch.bfloat16 if gpu_has_bf16(device) else torch.float32


def choose_precision(recipe: Recipe, device: torch.device) -> str:
    """The training step's autocast precision: "bf16" or "fp32"."""
    wanted = recipe.train.precision
    if wanted == "auto":
        return "bf16" if gpu_has_bf16(device) else "fp32"
    if wanted == "bf16" and device.type == "cuda" and not gpu_has_bf16(device):
        raise UnsupportedError("train.precision is 'bf16' but this GPU has no bf16 support; use precision: auto")
    return wanted


def autocast(precision: str, device: torch.device) -> Any:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
