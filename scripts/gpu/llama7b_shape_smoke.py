#!/usr/bin/env python3
"""GPU smoke run of the seed recipe's path on a LLaMA-2-7B-shaped model with RANDOM weights (no download).

What it proves: the full QLoRA path of recipes/medqa-qlora-7b.yaml (NF4 4-bit base, double quant, bf16 compute,
LoRA r 64 / alpha 128 on all 7 linear layers, gradient checkpointing, paged 8-bit AdamW, batch 8 x 1024 tokens)
loads, trains ~10 steps and writes its run report on this GPU, with real memory and throughput figures. What it
does not: anything about accuracy (the weights are random; the report says so in its model section).

    python scripts/gpu/llama7b_shape_smoke.py                      # on a GPU: 7B shape, 10 steps
    python scripts/gpu/llama7b_shape_smoke.py --scale-down         # on a CPU: same code, tiny shape, fp32 fallback

The model is built once by the pipeline itself (model.name_or_path "random:llama2-7b", built by pipeline/model/tiny.py),
saved under $KIT_CACHE_DIR/models (13.5 GB for the 7B shape) and then loaded through the ordinary
from_pretrained + BitsAndBytesConfig path a real checkpoint takes. The data are generated MedQA-layout questions
padded with clinical filler to about --seq-len tokens, so every batch is full-length (the worst case for memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SCALED_DOWN = ("random:llama2-7b:hidden_size=64,intermediate_size=172,num_hidden_layers=2,num_attention_heads=4,"
               "num_key_value_heads=4")

_FILLER = [
    "The patient reports intermittent chest discomfort on exertion relieved by rest.",
    "Vital signs show a temperature of 37.2 C, pulse 88/min and blood pressure 142/90 mm Hg.",
    "Laboratory studies show a leukocyte count of 11,200/mm3 and a serum creatinine of 1.1 mg/dL.",
    "She has a history of type 2 diabetes mellitus treated with metformin and hypertension treated with lisinopril.",
    "Physical examination shows mild bilateral pitting edema of the lower extremities.",
    "An electrocardiogram shows normal sinus rhythm without ST-segment changes.",
]
_OPTIONS = ["Aspirin", "Lisinopril", "Metoprolol", "Atorvastatin", "Nitroglycerin"]


def write_long_questions(path: Path, rows: int, seq_len: int, seed: int = 0) -> Path:
    """MedQA-layout rows whose prompt is about ``seq_len`` tokens of the random model's tokenizer."""
    from pipeline.model.tiny import train_tokenizer

    tokenizer = train_tokenizer(512)
    rng = random.Random(seed)
    sentences: list[str] = []
    while len(tokenizer(" ".join(sentences))["input_ids"]) < seq_len:
        sentences.append(rng.choice(_FILLER))
    lines = []
    for i in range(rows):
        rng.shuffle(sentences)
        options = dict(zip("ABCD", rng.sample(_OPTIONS, 4), strict=False))
        letter = "ABCD"[i % 4]
        question = f"Case {i}: " + " ".join(sentences) + " Which drug is most appropriate?"
        lines.append(json.dumps({"question": question, "options": options, "answer_idx": letter,
                                 "answer": options[letter], "meta_info": "smoke"}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", default="runs/llama7b-shape-smoke")
    parser.add_argument("--scale-down", action="store_true",
                        help="tiny shape, fp32 fallback, plain AdamW: the same code path, runnable on a CPU")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.output)
    seq_len = 128 if args.scale_down and args.seq_len == 1024 else args.seq_len
    train = write_long_questions(out / "data" / "train.jsonl", rows=max(4 * args.batch_size, 32), seq_len=seq_len)
    evals = write_long_questions(out / "data" / "eval.jsonl", rows=16, seq_len=seq_len, seed=1)

    overrides = [
        f"model.name_or_path={SCALED_DOWN if args.scale_down else 'random:llama2-7b'}",
        f"data.train={train}", f"data.eval={evals}", f"data.max_length={seq_len}",
        f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", "train.warmup_steps=2",
        "train.checkpoint_every=5", "train.log_every=1", f"train.output_dir={out / 'run'}",
        "eval.limit=16",
    ]
    if args.scale_down:
        overrides += ["quantization.on_unsupported=fallback", "train.optimizer=adamw", "train.precision=fp32",
                      "train.device=cpu"]
    from pipeline.__main__ import main as pipeline_main

    cli = ["finetune", "--recipe", str(ROOT / "recipes" / "medqa-qlora-7b.yaml"), *overrides, "--plain", "--overwrite"]
    print("running: python -m pipeline " + " ".join(cli), flush=True)
    code = pipeline_main(cli)
    if code != 0:
        return code
    report = json.loads((out / "run" / "report.json").read_text())
    model, training, device = report["model"], report["training"], report["environment"]["device"]
    summary = {
        "random_weights": model["random_weights"],
        "model": model["name_or_path"],
        "params_total": model["total_params"],
        "params_trainable": model["trainable_params"],
        "quantization_path": model["quantization_path"],
        "quantization_reason": model["quantization_reason"],
        "attention": model["attention"],
        "gradient_checkpointing": model["gradient_checkpointing"],
        "device": device.get("gpu_name") or "cpu",
        "arch": device.get("gpu_arch"),
        "backend": f"{device['backend']} {device.get('hip_version') or device.get('cuda_version') or ''}".strip(),
        "steps": training["steps"],
        "train_time_s": training["train_time_s"],
        "tokens_per_second": training["tokens_per_second"],
        "peak_memory": training["peak_memory"],
        "first_loss": training["first_loss"],
        "final_loss": training["final_loss"],
    }
    print(json.dumps(summary, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
