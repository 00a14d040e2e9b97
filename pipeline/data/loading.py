"""The fine-tune's data phase: which files, the questions they hold, their encoding and batch order, and the
warnings a user should see about them (repeats, rows that will be cut).

Rank coordination stays with the caller (pipeline/finetune.py): these functions take plain ranks and sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from pipeline.core.config import Recipe, RecipeError
from pipeline.data import lengths
from pipeline.data.batching import LengthGroupedBatches, collate
from pipeline.data.prompts import encode_example
from pipeline.data.questions import find_overlap, read_questions


@dataclass
class Data:
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    train_path: Optional[Path] = None
    eval_path: Optional[Path] = None
    overlap: int = 0
    # sha256/size of the bytes parsed, by role, taken at load time (pipeline.data.questions.LoadedFile.facts).
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def files(self) -> list[dict[str, Any]]:
        return [self.facts[role] for role in ("train", "eval") if role in self.facts]


def data_paths(recipe: Recipe, *, write_demo: bool = True) -> tuple[Optional[Path], Optional[Path]]:
    """(train, eval) files: the recipe's, or the embedded demo set written into ``<output_dir>/data``."""
    if recipe.data.source == "demo":
        from pipeline.data.demo import write_demo_data

        folder = Path(recipe.train.output_dir) / "data"
        if write_demo:
            return write_demo_data(folder, seed=recipe.train.seed)
        return folder / "train.jsonl", folder / "test.jsonl"
    if not recipe.data.train:
        raise RecipeError("recipe: data.train is not set: expected a MedQA JSONL file (or data.source: demo)")
    return Path(recipe.data.train), (Path(recipe.data.eval) if recipe.data.eval else None)


def read_data(train_path: Optional[Path], eval_path: Optional[Path]) -> Data:
    """Both files read and validated, with the sha256 of the bytes parsed and the train/eval overlap."""
    data = Data(train_path=train_path, eval_path=eval_path)
    for role, path in (("train", train_path), ("eval", eval_path)):
        if path is not None:
            loaded = read_questions(path)
            setattr(data, role, loaded.questions)
            data.facts[role], data.warnings = loaded.facts(), data.warnings + loaded.warnings
    if eval_path is not None:
        data.overlap = len(find_overlap(data.train, data.eval))
    return data


def _batcher(recipe: Recipe, examples: list, per_next: int, rank: int, world_size: int) -> LengthGroupedBatches:
    return LengthGroupedBatches([len(e["input_ids"]) for e in examples], per_next, seed=recipe.train.seed,
                                group_by_length=recipe.data.group_by_length, rank=rank, world_size=world_size)


def encode_training_set(recipe: Recipe, tokenizer: Any, questions: list, *, rank: int = 0,
                        world_size: int = 1) -> tuple[list[dict[str, Any]], LengthGroupedBatches]:
    """Every training question encoded (answer-only labels), and this rank's resumable batch order."""
    examples = [encode_example(tokenizer, q, recipe.data.target, recipe.data.max_length, recipe.data.add_bos)
                for q in questions]
    # The fast path takes a whole optimizer step's sequences at once and re-cuts them by tokens (train/step.py).
    per_next = recipe.train.batch_size * (recipe.train.grad_accum if recipe.train.micro_batch_tokens is not None else 1)
    return examples, _batcher(recipe, examples, per_next, rank, world_size)


def probe_batch(recipe: Recipe, examples: list, pad_id: int, device: torch.device, *, rank: int = 0,
                world_size: int = 1) -> dict[str, torch.Tensor]:
    """Two examples of this rank's first batch, from a separate batcher so the real one is not advanced."""
    indices = next(_batcher(recipe, examples, recipe.train.batch_size, rank, world_size))[:2]
    batch = collate([examples[i] for i in indices], pad_id)
    return {k: v.to(device) for k, v in batch.items()}


def data_warnings(recipe: Recipe, model: Any, tokenizer: Any, data: Data, full_list: Optional[Path] = None,
                  limit: int = 5) -> list[str]:
    """Repeated questions, and rows that will be cut (file:line, how much) in the train and eval files: the first
    ``limit`` of each kind, the rest counted, every one in ``full_list``."""
    rows = lengths.train_rows_over(data.train, tokenizer, recipe.data.target, recipe.data.max_length)
    if data.eval:  # evaluate() bounds prompt + choice by the model's context, as lm-eval does
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
        rows += lengths.eval_rows_over(data.eval, tokenizer, recipe.eval.scoring, context)
    return (lengths.summarize(data.warnings, limit, full_list)
            + lengths.summarize([f"warning: {m}" for m in rows], limit, _beside(full_list, "-length")))


def _beside(path: Optional[Path], suffix: str) -> Optional[Path]:
    return None if path is None else path.with_name(f"{path.stem}{suffix}{path.suffix}")
