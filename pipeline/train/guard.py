"""The adapter-gradient guard: before any optimizer step, every LoRA matrix must receive a gradient.

On the 4-bit path with ``quantization.on_unsupported: fallback``, adapters without gradient make the run reload on
an unquantized base and check again; anything still missing then is an error (training would change nothing).
"""

from __future__ import annotations

import gc
from typing import Any, Callable

import torch

from pipeline.core.config import Recipe
from pipeline.core.errors import AdapterGradientError
from pipeline.model.load import adapters_without_gradient, load_for_training, lora_parameters
from pipeline.model.precision import autocast
from pipeline.train.distributed import Dist
from pipeline.train.loss import mean_answer_loss


def missing_gradients(model: Any, batch: dict, precision: str, device: torch.device, dist: Dist) -> list[str]:
    """Names of the LoRA matrices that got a zero gradient on ``batch``; the same decision on every rank."""

    def loss_fn(m, b):
        with autocast(precision, device):
            return mean_answer_loss(m, b)

    missing = adapters_without_gradient(model, loss_fn, batch)
    # All ranks must take the same decision (fall back or not), whichever rank saw the problem.
    if dist.enabled and dist.sum(float(len(missing)), device) > 0 and not missing:
        missing = ["<another rank's adapters got no gradient>"]
    return missing


def guard_adapters(recipe: Recipe, loaded: tuple[Any, Any, Any], probe: dict, *, precision: str,
                   device: torch.device, dist: Dist, log: Callable[[str], None]) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, info) after the guard (reloaded on the fallback path if it had to), and the note the
    report records."""
    model, tokenizer, info = loaded
    missing = missing_gradients(model, probe, precision, device, dist)
    if missing and info.quantization_path == "nf4" and recipe.quantization.on_unsupported == "fallback":
        reason = (f"adapter-gradient guard: {len(missing)} of {len(lora_parameters(model))} LoRA matrices "
                  f"got zero gradient on the 4-bit path (first: {missing[0]})")
        log(f"falling back to an unquantized base: {reason}")
        del model
        _free(device)
        model, tokenizer, info = load_for_training(recipe, device, force_fallback=reason)
        missing = missing_gradients(model, probe, precision, device, dist)
    if missing:
        raise AdapterGradientError(
            f"{len(missing)} of {len(lora_parameters(model))} LoRA matrices got no gradient on the "
            f"{info.quantization_path} path (first: {missing[0]}); training would change nothing. "
            + ("Set quantization.on_unsupported=fallback to train on an unquantized base."
               if info.quantization_path == "nf4" else "Check lora.target_modules and the model.")
        )
    return model, tokenizer, info, f"all {len(lora_parameters(model))} LoRA matrices received a non-zero gradient " \
                                   "before step 1"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
