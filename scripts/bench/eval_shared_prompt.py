#!/usr/bin/env python3
"""Peer benchmark: evaluation that runs each prompt once and reuses its KV cache for every option
(``method="shared-prompt"``, the default) against one sequence per option (``method="full"``, what a naive
log-likelihood scorer does), on the same model and questions, in the same process.

    python scripts/bench/eval_shared_prompt.py                           # SmolLM2-135M, demo test set, cloze
    python scripts/bench/eval_shared_prompt.py --scoring letter --repeats 3
    python scripts/bench/eval_shared_prompt.py --model random:llama2-7b --tokenizer medqa-bpe \
        --data tests/data/medqa/us5_test.jsonl --scoring both --device cuda --repeats 1 \
        --batch-size 16 32 256:16384 --peer-batch-size 32 --out eval.json   # the whole MedQA test split, one GPU

``--batch-size`` takes one or more shared-prompt settings, each ``N`` (at most N questions a batch) or ``N:T``
(also at most T padded prompt tokens a batch: ``evaluate(token_budget=T)``). The peer runs once per scoring at
``--peer-batch-size`` sequences a pass. ``--tokenizer medqa-bpe`` scores with a byte-level BPE trained on the data
file's prompts (scripts/bench/medqa_bpe.py; its vocabulary defaults to the model's embedding rows), which stands
in for LLaMA's tokenizer when the model is a ``random:`` one (those come with a 512-token test tokenizer: prompts
about twice too long, and " A" may be several tokens).

For each scoring and setting it prints wall time (median of ``--repeats``), questions/s, prompt tokens/s (the
questions' real prompt tokens, the same count for every method), peak GPU memory, the ratio to the peer, and
whether the predictions equal the peer's (the largest score difference, and for flipped predictions the widest
margin by which the peer preferred its own choice). Exit status 1 if any differ.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from medqa_bpe import medqa_tokenizer  # noqa: E402  (scripts/bench/medqa_bpe.py, beside this script)


def batch_setting(text: str) -> tuple[int, int | None]:
    """``"32"`` -> (32, None); ``"256:16384"`` -> (256, 16384): questions a batch, padded prompt tokens a batch."""
    size, _, budget = text.partition(":")
    return int(size), int(budget) if budget else None


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokenizer", choices=["model", "medqa-bpe"], default="model",
                    help="the model's own tokenizer, or a BPE trained on the data's prompts (random: models)")
    ap.add_argument("--tokenizer-vocab", type=int, default=None,
                    help="medqa-bpe vocabulary (default: the model's embedding rows)")
    ap.add_argument("--scoring", choices=["cloze", "letter", "both"], default="cloze")
    ap.add_argument("--methods", default="shared-prompt,full", help="comma list; leave out full to skip the peer")
    ap.add_argument("--batch-size", nargs="+", type=batch_setting, default=[(16, None)], metavar="N[:T]",
                    help="shared-prompt settings: N questions a batch, optionally at most T padded prompt tokens")
    ap.add_argument("--peer-batch-size", type=int, default=None, help="full: sequences a pass (default: first N)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=8, help="questions scored untimed first, per scoring and method")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--data", help="a MedQA JSONL file (default: the demo test set)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", default=None, help="also write every number as JSON here")
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not set(args.methods) <= {"shared-prompt", "full"} or not args.methods:
        ap.error(f"--methods must name shared-prompt and/or full, got {args.methods}")
    args.peer_batch_size = args.peer_batch_size or args.batch_size[0][0]
    return args


def load(args: argparse.Namespace) -> tuple[Any, Any, list, dict]:
    """(model, tokenizer, questions, facts about the tokenizer) as the arguments ask."""
    from pipeline.data.demo import write_demo_data
    from pipeline.data.questions import load_questions
    from pipeline.model.load import load_for_eval

    model, tokenizer, _ = load_for_eval(args.model, device=torch.device(args.device))
    if args.data:
        questions = load_questions(args.data)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            questions = load_questions(write_demo_data(Path(tmp))[1])
    rows = model.get_input_embeddings().num_embeddings
    facts = {"tokenizer": args.tokenizer, "model_vocab": rows}
    if args.tokenizer == "medqa-bpe":
        vocab = args.tokenizer_vocab or rows
        if vocab > rows:
            sys.exit(f"--tokenizer-vocab {vocab} exceeds the model's {rows} embedding rows")
        tokenizer = medqa_tokenizer(questions, vocab)  # trained on the whole file, --limit or not
        facts["tokenizer_vocab"] = len(tokenizer)
    if args.limit:
        questions = questions[: args.limit]
    return model, tokenizer, questions, facts


def prompt_tokens(tokenizer: Any, questions: list) -> list[int]:
    """Each question's prompt length in tokens, as evaluate encodes it (the same for letter and cloze)."""
    from pipeline.data.prompts import continuations, encode_pair, format_prompt

    return [len(encode_pair(tokenizer, format_prompt(q), continuations(q, "letter")[0])[0]) for q in questions]


def timed(run: Any, device: str) -> tuple[float, float | None, Any]:
    """(seconds, peak GPU memory in GiB or None on CPU, result) of ``run()``."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return seconds, peak, result


def settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs of one scoring: every shared-prompt setting, then the peer (slowest last)."""
    runs = []
    if "shared-prompt" in args.methods:
        for size, budget in args.batch_size:
            name = f"shared-prompt b{size}" + (f" t{budget}" if budget else "")
            runs.append({"name": name, "method": "shared-prompt", "batch_size": size, "token_budget": budget})
    if "full" in args.methods:
        runs.append({"name": f"full b{args.peer_batch_size} (peer)", "method": "full",
                     "batch_size": args.peer_batch_size, "token_budget": None})
    return runs


def run_scoring(model: Any, tokenizer: Any, questions: list, scoring: str, args: argparse.Namespace) -> list[dict]:
    """Time every setting on ``questions`` (repeats interleaved, so load changes hit all alike); one dict each."""
    from pipeline.evaluate.scoring import evaluate

    runs = settings(args)
    for run in runs:  # untimed: CUDA context, cuBLAS handles, kernel choices
        evaluate(model, tokenizer, questions[: args.warmup], scoring=scoring, batch_size=run["batch_size"],
                 token_budget=run["token_budget"], method=run["method"])
        run.update(times=[], peaks=[])
    for _ in range(args.repeats):
        for run in runs:
            seconds, peak, result = timed(lambda run=run: evaluate(
                model, tokenizer, questions, scoring=scoring, batch_size=run["batch_size"],
                token_budget=run["token_budget"], method=run["method"]), args.device)
            run["times"].append(seconds)
            run["peaks"].append(peak)
            run["predictions"] = result.predictions
            print(f"  {scoring:6s} {run['name']:28s} {seconds:8.2f} s", flush=True)
    return runs


def summarize(runs: list[dict], questions: int, tokens: int) -> list[dict]:
    """Per run: wall (median), questions/s, prompt tokens/s, peak GiB, x peer, predictions equal to the peer's."""
    peer = next((r for r in runs if r["method"] == "full"), None)
    rows = []
    for run in runs:
        wall = statistics.median(run["times"])
        row = {k: run[k] for k in ("name", "method", "batch_size", "token_budget", "times")}
        row.update(wall_s=wall, questions_per_s=questions / wall, prompt_tokens_per_s=tokens / wall,
                   peak_gib=max(run["peaks"]) if run["peaks"][0] is not None else None)
        if peer is not None:
            row["x_peer"] = statistics.median(peer["times"]) / wall
            if run is not peer:
                row.update(compare(run["predictions"], peer["predictions"]))
        rows.append(row)
    return rows


def compare(mine: list[dict], peer: list[dict]) -> dict[str, Any]:
    """How many predictions (and, for cloze, length-normalized ones) differ from the peer's; largest score gap;
    and, over the differing questions, the widest margin by which the peer preferred its own choice to ours.

    A flipped prediction whose peer margin is below the largest score gap is a near-tie that rounding (bf16: other
    matrix shapes, other kernels) can flip; a margin above it would point at a scoring difference instead.
    """
    keys = [k for k in ("predicted", "predicted_norm") if k in mine[0]]
    flipped = [(a, b) for a, b in zip(mine, peer, strict=True) if any(a[k] != b[k] for k in keys)]
    gap = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(mine, peer, strict=True) for k in a["scores"])
    margin = max((b["scores"][b["predicted"]] - b["scores"][a["predicted"]] for a, b in flipped), default=0.0)
    return {"differing_predictions": len(flipped), "max_score_difference": gap, "widest_flipped_margin": margin}


def table(scoring: str, rows: list[dict], questions: int) -> str:
    lines = [f"{'':2}{'run':28s} {'wall s':>8} {'q/s':>7} {'prompt tok/s':>13} {'peak GiB':>9} {'x peer':>7} "
             "same predictions as the peer"]
    for r in rows:
        peak = f"{r['peak_gib']:9.2f}" if r["peak_gib"] is not None else f"{'-':>9}"
        ratio = f"{r['x_peer']:6.2f}x" if "x_peer" in r else f"{'-':>7}"
        same = "-"
        if "differing_predictions" in r:
            n, gap = r["differing_predictions"], r["max_score_difference"]
            same = ("yes" if n == 0 else f"NO ({n} of {questions}, peer margins <= "
                    f"{r['widest_flipped_margin']:.2g})") + f", max |score diff| {gap:.2g}"
        lines.append(f"  {r['name']:28s} {r['wall_s']:8.2f} {r['questions_per_s']:7.1f} "
                     f"{r['prompt_tokens_per_s']:13,.0f} {peak} {ratio} {same}")
    return f"{scoring} scoring\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipeline.data.prompts import format_prompt

    args = parse(argv)
    model, tokenizer, questions, facts = load(args)
    lengths = prompt_tokens(tokenizer, questions)
    words = sum(len(format_prompt(q).split()) for q in questions)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    meta = {**facts, "model": args.model, "questions": len(questions), "prompt_tokens": sum(lengths),
            "mean_prompt_tokens": sum(lengths) / len(lengths), "max_prompt_tokens": max(lengths),
            "tokens_per_word": sum(lengths) / max(1, words), "repeats": args.repeats, "device": device,
            "torch": torch.__version__, "dtype": str(model.dtype).replace("torch.", "")}
    print(f"{args.model} ({meta['dtype']}), {device}, torch {torch.__version__}; {len(questions)} questions, "
          f"{meta['prompt_tokens']:,} prompt tokens (mean {meta['mean_prompt_tokens']:.0f}, max "
          f"{meta['max_prompt_tokens']}, {meta['tokens_per_word']:.2f} per word), tokenizer {args.tokenizer}"
          + (f" ({facts['tokenizer_vocab']} tokens)" if "tokenizer_vocab" in facts else ""), flush=True)
    results: dict[str, Any] = {"meta": meta, "scorings": {}}
    for scoring in (["letter", "cloze"] if args.scoring == "both" else [args.scoring]):
        runs = run_scoring(model, tokenizer, questions, scoring, args)
        rows = summarize(runs, len(questions), meta["prompt_tokens"])
        results["scorings"][scoring] = rows
        print(table(scoring, rows, len(questions)), flush=True)
        if args.out:  # after each scoring, so a run stopped later keeps what it measured
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    differ = [r for rows in results["scorings"].values() for r in rows if r.get("differing_predictions")]
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
