"""Optimizer and learning-rate schedule from the recipe, and seeding."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from pipeline.core.config import Recipe
from pipeline.core.errors import UnsupportedError


def build_optimizer(recipe: Recipe, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    name, t = recipe.train.optimizer, recipe.train
    if name == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if device.type != "cuda":
        raise UnsupportedError(
            f"train.optimizer is {name!r}: bitsandbytes' 8-bit optimizers need a GPU (they fail on CPU); "
            "use train.optimizer=adamw"
        )
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[recipe.train.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=recipe.train.warmup_steps,
                         num_training_steps=recipe.train.steps)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
