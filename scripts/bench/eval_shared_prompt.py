#!/usr/bin/env python3
"""Peer benchmark: evaluation that runs each prompt once and reuses its KV cache for every option
(``method="shared-prompt"``, the default) against one sequence per option (``method="full"``, what a naive
log-likelihood scorer does), on the same model, questions and batch size, in the same process.

    python scripts/bench/eval_shared_prompt.py                           # SmolLM2-135M, demo test set, cloze
    python scripts/bench/eval_shared_prompt.py --scoring letter --repeats 3
    python scripts/bench/eval_shared_prompt.py --model random:llama2-7b --data tests/data/medqa/us5_test.jsonl \
        --scoring letter --device cuda --repeats 1 --batch-size 32      # the whole MedQA test split on a GPU

Prints the median wall time of each method, the ratio, and checks that both give the same predictions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--scoring", choices=["cloze", "letter"], default="cloze")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--data", help="a MedQA JSONL file (default: the demo test set)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)

    import torch

    from pipeline.data import load_questions
    from pipeline.demo_data import write_demo_data
    from pipeline.evaluate import evaluate
    from pipeline.model import load_for_eval

    model, tokenizer, _ = load_for_eval(args.model, device=torch.device(args.device))
    if args.data:
        questions = load_questions(args.data)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            questions = load_questions(write_demo_data(Path(tmp))[1])
    if args.limit:
        questions = questions[: args.limit]
    times: dict[str, list[float]] = {"shared-prompt": [], "full": []}
    predictions: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for method in times:  # interleaved, so a change in machine load hits both alike
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = evaluate(model, tokenizer, questions, scoring=args.scoring, batch_size=args.batch_size,
                              method=method)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[method].append(time.perf_counter() - start)
            predictions[method] = [p["predicted"] for p in result.predictions]
    shared, full = (statistics.median(times[m]) for m in ("shared-prompt", "full"))
    same = predictions["shared-prompt"] == predictions["full"]
    print(f"{len(questions)} questions, {args.scoring} scoring, batch {args.batch_size}, {args.repeats} repeats, "
          f"torch {torch.__version__}, "
          + (torch.cuda.get_device_name(0) if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"))
    print(f"shared-prompt  median {shared:7.2f} s  {times['shared-prompt']}")
    print(f"full           median {full:7.2f} s  {times['full']}")
    print(f"ratio full / shared-prompt: {full / shared:.2f}x   same predictions: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
