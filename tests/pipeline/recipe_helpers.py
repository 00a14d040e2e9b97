"""Helpers for the training tests: a small learnable MedQA-format file and a fast tiny-model recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pipeline.core.config import Recipe, load_recipe

_DRUGS = [
    ("lisinopril", "ACE inhibitor"), ("enalapril", "ACE inhibitor"), ("losartan", "angiotensin receptor blocker"),
    ("valsartan", "angiotensin receptor blocker"), ("metformin", "biguanide"), ("atorvastatin", "statin"),
    ("simvastatin", "statin"), ("amoxicillin", "penicillin antibiotic"), ("metoprolol", "beta blocker"),
    ("atenolol", "beta blocker"), ("omeprazole", "proton pump inhibitor"), ("warfarin", "vitamin K antagonist"),
]
_CLASSES = sorted({c for _, c in _DRUGS})


def write_questions(path: Path, n: int = 16, offset: int = 0) -> Path:
    """``n`` MedQA-layout rows "Which drug class does X belong to?" (4 options, answer letter rotating A-D)."""
    rows = []
    for i in range(n):
        drug, klass = _DRUGS[(i + offset) % len(_DRUGS)]
        others = [c for c in _CLASSES if c != klass]
        distractors = [others[(i + k) % len(others)] for k in range(3)]
        letters = "ABCD"
        gold = (i + offset) % 4
        texts = distractors[:gold] + [klass] + distractors[gold:]
        options = {letters[k]: texts[k] for k in range(4)}
        question = f"Patient {offset}-{i}: which drug class does {drug} belong to?"
        rows.append({"question": question, "answer": klass, "options": options, "answer_idx": letters[gold],
                     "meta_info": "step1"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe_file(tmp_path: Path, model_dir: Path, *, output_dir: Optional[Path] = None, steps: int = 4,
                      eval_rows: int = 8, log_every: Optional[int] = None, body: str = "") -> Path:
    """A YAML recipe file for the command-line tests (``python -m pipeline finetune --recipe``): fp32 LoRA r 8 on CPU,
    text target, cloze scoring, 16 training rows, ``eval_rows`` evaluation rows, a checkpoint every 2 steps.

    Written as YAML text (not from a Recipe) so tests can edit a setting's spelling, e.g. ``steps: 4`` to ``four``;
    ``body`` is appended as more YAML.
    """
    train = write_questions(tmp_path / "train.jsonl", 16)
    evals = write_questions(tmp_path / "eval.jsonl", eval_rows, offset=3)
    log = f"log_every: {log_every}, " if log_every is not None else ""
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model: {{name_or_path: '{model_dir}', attention: sdpa}}\n"
        "quantization: {mode: none}\n"
        "lora: {r: 8, alpha: 16, dropout: 0.0}\n"
        f"data: {{train: '{train}', eval: '{evals}', target: text, max_length: 128}}\n"
        f"train: {{steps: {steps}, batch_size: 4, lr: 1.0e-2, device: cpu, precision: fp32, checkpoint_every: 2, "
        f"{log}output_dir: '{output_dir or tmp_path / 'run'}'}}\n"
        "eval: {scoring: cloze}\n" + body
    )
    return path


def tiny_recipe(model_dir: Path, tmp: Path, *, eval_rows: int = 0, extra: Optional[list[str]] = None) -> Recipe:
    """Fast settings for the tiny model: fp32 LoRA r 8 on CPU, 6 steps, batch 4, text target + cloze scoring.

    lm_head is a LoRA target here (not in the real recipes): the tiny random model's output layer has weights of
    std 0.02, which caps its logits near +-1 and keeps the loss near ln(vocab) unless the head itself can adapt.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    train = write_questions(tmp / "train.jsonl", 16)
    overrides = [
        f"model.name_or_path={model_dir}",
        "model.attention=sdpa",
        "quantization.mode=none",
        "lora.r=8", "lora.alpha=16", "lora.dropout=0.1",
        "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]",
        f"data.train={train}",
        "data.target=text", "data.max_length=128",
        "train.steps=6", "train.batch_size=4", "train.lr=1e-2", "train.warmup_steps=2", "train.schedule=linear",
        "train.precision=fp32", "train.device=cpu", "train.checkpoint_every=0", "train.log_every=1",
        "train.seed=3", f"train.output_dir={tmp / 'run'}",
        "eval.scoring=cloze", "eval.batch_size=8",
    ]
    if eval_rows:
        overrides.append(f"data.eval={write_questions(tmp / 'eval.jsonl', eval_rows, offset=5)}")
    return load_recipe(None, overrides + list(extra or []))
