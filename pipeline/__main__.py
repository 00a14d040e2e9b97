"""Command line: ``python -m pipeline {prepare,finetune,evaluate} ...``.

    python -m pipeline prepare  --recipe recipes/demo-cpu.yaml
    python -m pipeline finetune --recipe recipes/medqa-qlora-7b.yaml [section.key=value ...] [--resume] [--plain]
    python -m pipeline evaluate --model DIR [--adapter DIR] --data FILE --output DIR [--limit N] [--scoring cloze]
    python -m pipeline reproduce runs/demo/report.json [--output comparison.json]

Mistakes in what the user gave us (recipe keys and types, data rows, an impossible setting for this machine) exit
with status 2 and a short message naming the key, file:line or setting, never a traceback: the user's fix is in
their input, not in our code. Real bugs still raise with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

# Before transformers is imported anywhere: patient-data sites do not want usage pings leaving the host.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

USAGE_ERROR = 2
_MAX_LINES = 25  # one screen


def _fail(message: str) -> int:
    lines = message.splitlines()
    if len(lines) > _MAX_LINES:
        lines = lines[:_MAX_LINES] + [f"... ({len(lines) - _MAX_LINES} more lines)"]
    print("error: " + "\n".join(lines), file=sys.stderr)
    return USAGE_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="MedQA QLoRA fine-tune and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="validate the recipe's data; print row counts, contamination, token lengths")
    prep.add_argument("--recipe", required=True)
    prep.add_argument("overrides", nargs="*", metavar="section.key=value")

    fine = sub.add_parser("finetune", help="train a LoRA adapter as the recipe says, then evaluate it")
    fine.add_argument("--recipe", required=True)
    fine.add_argument("overrides", nargs="*", metavar="section.key=value")
    fine.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    fine.add_argument("--overwrite", action="store_true", help="discard checkpoints already in train.output_dir")
    fine.add_argument("--plain", action="store_true", help="plain log lines instead of a progress bar")

    ev = sub.add_parser("evaluate", help="score a model (and adapter) on a MedQA file")
    ev.add_argument("--model", required=True, help="checkpoint folder, smollm2-135m-instruct, or a hub id")
    ev.add_argument("--adapter", help="LoRA adapter folder written by finetune (<output_dir>/adapter)")
    ev.add_argument("--data", required=True, help="MedQA or SWAG-style JSONL")
    ev.add_argument("--output", required=True, help="folder for predictions.jsonl and metrics.json")
    ev.add_argument("--limit", type=int, help="score only the first N questions")
    ev.add_argument("--scoring", choices=["letter", "cloze"], default="letter")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")

    rp = sub.add_parser("reproduce", help="re-run a report's evaluation; exit 0 if the predictions match, 1 if not")
    rp.add_argument("report", help="report.json (or its folder) written by finetune or evaluate")
    rp.add_argument("--output", help="also write the comparison as JSON to this file")
    rp.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from pipeline.config import RecipeError
    from pipeline.data import DataError
    from pipeline.errors import UnsupportedError
    from pipeline.reproduce import ReproduceError

    try:
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "finetune":
            return cmd_finetune(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        return cmd_evaluate(args)
    except (RecipeError, DataError, UnsupportedError, ReproduceError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except ValueError as exc:
        # encode_example and the batcher raise ValueError naming the example (file:line) or the setting.
        if _is_input_error(exc):
            return _fail(str(exc))
        raise


def _is_input_error(exc: ValueError) -> bool:
    text = str(exc)
    return "expected" in text or ".jsonl:" in text


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipeline.config import load_recipe
    from pipeline.train import finetune

    recipe = load_recipe(args.recipe, args.overrides)
    finetune(recipe, resume=args.resume, overwrite=args.overwrite, plain=True if args.plain else None)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from kit import atomic
    from pipeline.reproduce import render, reproduce

    comparison = reproduce(Path(args.report), device=args.device)
    print(render(comparison))
    if args.output:
        atomic.write_text(Path(args.output), json.dumps(comparison.to_dict(), indent=2) + "\n")
    return 0 if comparison.identical else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    import time

    from pipeline import report as rep
    from pipeline.data import load_questions
    from pipeline.evaluate import evaluate, write_eval
    from pipeline.model import choose_device, is_random, load_for_eval, resolve_model

    started, t0 = rep.utc_now(), time.monotonic()
    questions = load_questions(args.data)
    device = choose_device(args.device)
    model, tokenizer = load_for_eval(args.model, args.adapter, device=device)
    result = evaluate(model, tokenizer, questions, scoring=args.scoring, batch_size=args.batch_size, limit=args.limit)
    write_eval(result, Path(args.output))
    # An accuracy is only evidence with what produced it: the same report a fine-tune writes, less training.
    rep.write_report(Path(args.output), rep.build_report(
        "evaluate",
        started_at=started,
        summary={"wall_time_s": round(time.monotonic() - t0, 1)},
        model={"name_or_path": args.model, "adapter": args.adapter,
               "random_weights": is_random(str(resolve_model(args.model))),
               "dtype": str(next(model.parameters()).dtype).replace("torch.", "")},
        device=device,
        data={"files": [rep.data_file_facts(Path(args.data), len(questions))]},
        evaluation={"scoring": args.scoring, "file": str(args.data), "limit": args.limit,
                    "batch_size": args.batch_size, "result": result.metrics},
    ))
    m = result.metrics
    extra = f", acc_norm {m['acc_norm']:.3f}" if m.get("acc_norm") is not None else ""
    print(f"accuracy {m['accuracy']:.3f}{extra} on {m['count']} questions ({args.scoring} scoring) -> {args.output}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Validate data (every problem as file:line), report rows, contamination and token lengths; write demo data."""
    from pipeline.config import load_recipe
    from pipeline.data import DataError, find_overlap, load_questions
    from pipeline.prompts import encode_example
    from pipeline.train import data_paths

    recipe = load_recipe(args.recipe, args.overrides)
    train_path, eval_path = data_paths(recipe)
    problems: list[str] = []
    loaded = {}
    for role, path in (("train", train_path), ("eval", eval_path)):
        if path is None:
            continue
        try:
            loaded[role] = load_questions(path)
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataError(problems)
    summary: dict = {"recipe": str(args.recipe)}
    for role, questions in loaded.items():
        path = train_path if role == "train" else eval_path
        print(f"{role}: {path}: {len(questions)} questions")
        summary[role] = {"path": str(path), "rows": len(questions)}
    if "eval" in loaded:
        overlap = find_overlap(loaded["train"], loaded["eval"])
        summary["contamination"] = len(overlap)
        if overlap:
            print(f"warning: {len(overlap)} evaluation questions also occur in the training file, e.g. "
                  f"{overlap[0][1].source} = {overlap[0][0].source}")
        else:
            print("contamination: no evaluation question occurs in the training file")

    tokenizer = _tokenizer_for(recipe.model.name_or_path, recipe.model.trust_remote_code)
    big = 10**9  # measure untruncated lengths
    lengths = [len(encode_example(tokenizer, q, recipe.data.target, big)["input_ids"]) for q in loaded["train"]]
    stats = _length_stats(lengths, recipe.data.max_length)
    summary["train_tokens"] = stats
    print(f"train token lengths ({recipe.data.target} target): min {stats['min']}, median {stats['median']}, "
          f"p95 {stats['p95']}, max {stats['max']}; {stats['over_max_length']} over data.max_length "
          f"{recipe.data.max_length} (their prompt's start is cut)")
    print(json.dumps(summary))
    return 0


def _tokenizer_for(name_or_path: str, trust_remote_code: bool):
    from pipeline.model import _loading, load_tokenizer, resolve_model
    from pipeline.tiny import RANDOM_PREFIX, train_tokenizer

    if name_or_path.startswith(RANDOM_PREFIX):
        # The random-weight smoke models use the small local tokenizer; no need to build 7 B weights to count tokens.

        return train_tokenizer(512)
    resolved = resolve_model(name_or_path)
    return _loading(resolved, lambda: load_tokenizer(resolved, trust_remote_code))


def _length_stats(lengths: list[int], max_length: int) -> dict:
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "median": int(statistics.median(ordered)),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "over_max_length": sum(1 for n in ordered if n > max_length),
    }


if __name__ == "__main__":
    sys.exit(main())
