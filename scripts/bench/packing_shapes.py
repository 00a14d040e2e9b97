#!/usr/bin/env python3
"""What each way of cutting a step gives on the host, before any GPU: padding, distinct micro-step shapes, and the
attention score work, for the benchmark's own steps (the same seeded MedQA steps and BPE as train_throughput.py).

Why this exists: a cold run pays for every new micro-step shape (cuDNN attention plans, Triton specializations),
and SDPA over packed rows computes the whole row x row score matrix under a block-diagonal mask while a
variable-length kernel computes only each sequence's own. These counts follow from the cut alone, so they are
measured here exactly, on a CPU, for any token budget.

    python scripts/bench/packing_shapes.py --per-step 8 --steps 50 --budget 9000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CUTS = {
    "padded (length-sorted)": dict(packing=False),
    "rows, first round (first-fit, 2,048 wide)": dict(packing=True),
    "rows, balanced + rounded to 128": dict(packing=True, balance=True, round_to=128),
    "varlen (one row per micro-step)": dict(packing=True, varlen=True),
    # the tuned peer with all of a step's sequences in one micro-step: DataCollatorWithFlattening's single row,
    # SDPA with the block-diagonal mask (no flash_attn installed)
    "flattened step in one row, SDPA mask (tuned peer)": dict(packing=True, row_width=10**6, fixed_budget=10**6),
}


def measure(examples: list, steps: list, pad: int, budget: int) -> list[dict]:
    from pipeline.data.packing import plan_step

    out = []
    for name, cut in CUTS.items():
        real = padded = micro = 0
        shapes: set = set()
        masked_work = needed_work = 0
        for idx in steps:
            kw = dict(cut)
            step = plan_step([examples[i] for i in idx], pad, token_budget=kw.pop("fixed_budget", budget), **kw)
            real += step.real_tokens
            padded += step.padded_tokens
            micro += len(step.micro)
            for m in step.micro:
                shapes.add(tuple(m.input_ids.shape))
                rows, width = m.input_ids.shape
                if cut.get("varlen"):
                    cu = m.cu_seqlens.tolist()
                    masked_work += sum((b - a) ** 2 for a, b in zip(cu[:-1], cu[1:], strict=False))
                else:  # SDPA walks each row's whole score matrix (padding or block-diagonal mask)
                    masked_work += rows * width * width
            needed_work += sum(len(examples[i]["input_ids"]) ** 2 for i in idx)
        out.append({"cut": name, "padding_pct": 100 * (padded - real) / padded, "distinct_shapes": len(shapes),
                    "micro_steps_per_step": micro / len(steps), "attention_work_x_needed": masked_work / needed_work})
    return out


def main(argv: list[str] | None = None) -> int:
    from medqa_bpe import medqa_tokenizer
    from train_throughput import step_plan

    from pipeline.data.prompts import encode_example
    from pipeline.data.questions import load_questions

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT / "tests/data/medqa/us5_test.jsonl"))
    ap.add_argument("--per-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--budget", type=int, default=16384, help="the memory plan's tokens per micro-step")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    questions = load_questions(args.data)
    tok = medqa_tokenizer(questions, 3000)
    examples = [encode_example(tok, q, "letter", 1024) for q in questions]
    steps = step_plan(len(examples), args.per_step, args.steps, args.seed)
    print(f"{args.steps} steps x {args.per_step} sequences, token budget {args.budget}")
    print(f"{'cut':<44} {'padding %':>9} {'shapes':>6} {'micro/step':>10} {'attention work / needed':>24}")
    for r in measure(examples, steps, tok.pad_token_id, args.budget):
        print(f"{r['cut']:<44} {r['padding_pct']:9.1f} {r['distinct_shapes']:6d} {r['micro_steps_per_step']:10.2f} "
              f"{r['attention_work_x_needed']:24.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
