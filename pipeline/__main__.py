"""Command line: ``python -m pipeline {prepare,finetune,evaluate} ...``.

    python -m pipeline prepare  --recipe recipes/demo-cpu.yaml
    python -m pipeline finetune --recipe recipes/medqa-qlora-7b.yaml [section.key=value ...] [--resume] [--plain]
    python -m pipeline evaluate --model DIR [--adapter DIR [--merge]] --data FILE --output DIR [--limit N]
                                [--scoring cloze] [--add-bos auto|always|never]
    python -m pipeline compare  RUN_A RUN_B [--output DIR]
    python -m pipeline reproduce runs/demo/report.json [--output comparison.json]

Mistakes in what the user gave us (recipe keys and types, data rows, an impossible setting for this machine, an
unusable output folder) exit with status 2 and a short message naming the key, file:line or setting, never a
traceback: the user's fix is in their input, not in our code. What counts as such a mistake is decided by type
(``pipeline.core.errors.UserError``), never by the words of a message; everything else is a bug and raises with a
traceback. Recipe overrides (``section.key=value``) may stand anywhere on the command line, also after flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

from pipeline.core.config import CPU_EVAL_TOKEN_BUDGET, SEED_EVAL_BATCH_SIZE, SEED_EVAL_TOKEN_BUDGET

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="MedQA QLoRA fine-tune and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="validate the recipe's data; print row counts, contamination, token lengths")
    prep.add_argument("--recipe", required=True)
    prep.add_argument("overrides", nargs="*", metavar="section.key=value")
    prep.add_argument("--all-warnings", action="store_true", help="list every data warning (default: the first 5)")

    fine = sub.add_parser("finetune", help="train a LoRA adapter as the recipe says, then evaluate it")
    fine.add_argument("--recipe", required=True)
    fine.add_argument("overrides", nargs="*", metavar="section.key=value")
    fine.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    fine.add_argument("--overwrite", action="store_true", help="discard checkpoints already in train.output_dir")
    fine.add_argument("--allow-changes", default="", metavar="KEY,...",
                      help="with --resume: recipe keys (e.g. train.lr,data.train) that may differ from the "
                           "checkpoint's although they change the optimization; the report records the change")
    fine.add_argument("--plain", action="store_true", help="plain log lines instead of a progress bar")

    ev = sub.add_parser("evaluate", help="score a model (and adapter) on a MedQA file")
    ev.add_argument("--model", required=True, help="checkpoint folder, smollm2-135m-instruct, or a hub id")
    ev.add_argument("--adapter", help="LoRA adapter folder written by finetune (<output_dir>/adapter)")
    ev.add_argument("--data", required=True, help="MedQA or SWAG-style JSONL")
    ev.add_argument("--output", required=True, help="folder for predictions.jsonl and metrics.json")
    ev.add_argument("--limit", type=_positive_int, help="score only the first N questions")
    ev.add_argument("--scoring", choices=["letter", "cloze"], default="letter")
    ev.add_argument("--merge", action="store_true",
                    help="merge the adapter into a bf16 (GPU) / fp32 (CPU) base instead of loading the base the way "
                         "the adapter was trained (its run record): a different number from the run's own")
    ev.add_argument("--add-bos", choices=["auto", "always", "never"],
                    help="BOS rule (pipeline/data/prompts.py); default: the adapter's run record, else auto "
                         "(lm-eval's)")
    ev.add_argument("--batch-size", type=_positive_int, default=None,
                    help=f"at most this many questions a forward pass (default: {SEED_EVAL_BATCH_SIZE}, the seed "
                         "recipe's eval.batch_size)")
    ev.add_argument("--token-budget", type=_positive_int, default=None,
                    help="at most this many padded prompt tokens a forward pass (default, when --batch-size is not "
                         f"given either: {SEED_EVAL_TOKEN_BUDGET}, the seed recipe's eval.token_budget, on a GPU; "
                         f"{CPU_EVAL_TOKEN_BUDGET} on a CPU, where larger passes are slower. With --batch-size "
                         "alone: no budget, --batch-size questions whatever their length)")
    ev.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ev.add_argument("--group-by", metavar="FIELD", help="also break accuracy down by this field of the data rows")

    cmp = sub.add_parser("compare", help="compare two evaluations of the same questions (paired interval, McNemar)")
    cmp.add_argument("run_a", metavar="RUN_A", help="evaluation folder (or fine-tune run folder) of model A")
    cmp.add_argument("run_b", metavar="RUN_B", help="evaluation folder (or fine-tune run folder) of model B")
    cmp.add_argument("--output", help="also write report.md and compare.json into this folder (default: print only)")

    rp = sub.add_parser("reproduce", help="re-run a report's evaluation; exit 0 if the predictions match, 1 if not")
    rp.add_argument("report", help="report.json (or its folder) written by finetune or evaluate")
    rp.add_argument("--output", help="also write the comparison as JSON to this file")
    rp.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """argparse, with ``section.key=value`` overrides accepted after flags too (``--resume train.steps=10``):
    argparse's ``nargs="*"`` positional only takes the first run of positionals."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from pipeline.core.errors import UserError
    from pipeline.core.quiet import quiet_libraries

    quiet_libraries()

    try:
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "finetune":
            return cmd_finetune(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        return cmd_evaluate(args)
    except UserError as exc:
        return _fail(str(exc))


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipeline.core.config import load_recipe
    from pipeline.finetune import finetune

    recipe = load_recipe(args.recipe, args.overrides)
    allow = tuple(k.strip() for k in args.allow_changes.split(",") if k.strip())
    finetune(recipe, resume=args.resume, overwrite=args.overwrite, allow_changes=allow,
             plain=True if args.plain else None)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from kit import atomic
    from pipeline.report.reproduce import render, reproduce

    comparison = reproduce(Path(args.report), device=args.device)
    print(render(comparison))
    if args.output:
        atomic.write_text(Path(args.output), json.dumps(comparison.to_dict(), indent=2) + "\n")
    return 0 if comparison.identical else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    import time

    from pipeline.core import preflight
    from pipeline.data import lengths
    from pipeline.data.questions import read_questions
    from pipeline.evaluate.scoring import evaluate, write_eval
    from pipeline.model.load import choose_device, is_random, load_for_eval, resolve_model
    from pipeline.report import build as rep

    started, t0 = rep.utc_now(), time.monotonic()
    preflight.check_output_dir(Path(args.output), key="--output")  # before minutes of scoring, not at the write
    record, record_path = _adapter_record(args)  # before the data: a missing adapter names the step to run first
    loaded = read_questions(args.data)
    questions = loaded.questions
    for warning in lengths.summarize(loaded.warnings, 5, Path(args.output) / "data-warnings.txt"):
        print(warning, file=sys.stderr)
    device = choose_device(args.device)
    add_bos = args.add_bos or (record or {}).get("add_bos") or "auto"
    batch_size, token_budget = eval_batching(args.batch_size, args.token_budget, device.type)
    model, tokenizer, how = load_for_eval(args.model, args.adapter, device=device, merge=args.merge, record=record)
    result = evaluate(model, tokenizer, questions, scoring=args.scoring, batch_size=batch_size, limit=args.limit,
                      token_budget=token_budget, add_bos=add_bos)
    write_eval(result, Path(args.output))
    # An accuracy is only evidence with what produced it: the same report a fine-tune writes, less training.
    rep.write_report(Path(args.output), rep.build_report(
        "evaluate",
        started_at=started,
        summary={"wall_time_s": round(time.monotonic() - t0, 1)},
        model={"name_or_path": args.model, "adapter": args.adapter,
               "random_weights": is_random(str(resolve_model(args.model))),
               "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
               # as-trained (the adapter's base as in training, from its run record), merged, or base alone.
               "load": {**how, "run_record": str(record_path) if record_path else None}},
        device=device,
        data={"files": [loaded.facts()]},  # hashed as read, not re-read at report time
        evaluation={"scoring": args.scoring, "add_bos": add_bos, "file": str(args.data), "limit": args.limit,
                    "batch_size": batch_size, "token_budget": token_budget, "group_by": args.group_by,
                    "result": result.metrics},
    ))
    m = result.metrics
    extra = f", acc_norm {m['acc_norm']:.3f}" if m.get("acc_norm") is not None else ""
    print(f"accuracy {m['accuracy']:.3f}{extra} on {m['count']} questions ({args.scoring} scoring, "
          f"model loaded {how['mode']}: {how['quantization_path']}) -> {args.output}")
    return 0


def eval_batching(batch_size: Optional[int], token_budget: Optional[int],
                  device_type: str = "cuda") -> tuple[int, Optional[int]]:
    """(questions, padded prompt tokens) a forward pass of ``evaluate`` from its two flags (None: not given).

    Neither given: the seed recipe's eval values, which are fast on a GPU; on a CPU a smaller token budget, which is
    faster there and keeps a laptop's memory low (pipeline/core/config.py has the measurements). A lone
    --batch-size keeps its old meaning (that many questions, no budget); a lone --token-budget fills passes up to
    the seed's batch size.
    """
    if batch_size is None and token_budget is None:
        return SEED_EVAL_BATCH_SIZE, SEED_EVAL_TOKEN_BUDGET if device_type != "cpu" else CPU_EVAL_TOKEN_BUDGET
    return batch_size or SEED_EVAL_BATCH_SIZE, token_budget


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison; files only where --output says (a comparison is cheap to redo, and a folder appearing
    in whatever directory the user stands in is litter)."""
    from pipeline.report.compare import compare, render
    from pipeline.report.sections import p_value, signed

    output = Path(args.output) if args.output else None
    result = compare(Path(args.run_a), Path(args.run_b), output)
    print(render(result))
    d = result["difference"]
    print(f"{result['count']} questions: accuracy {result['accuracy_a']['value']:.3f} (A) -> "
          f"{result['accuracy_b']['value']:.3f} (B), difference {signed(d['value'])} (95% CI {signed(d['low'])} to "
          f"{signed(d['high'])}), McNemar p = {p_value(result['mcnemar_exact_p'])}"
          + (f" -> {output / 'report.md'}" if output else ""))
    return 0


def _adapter_record(args: argparse.Namespace):
    """(run record, its path) of --adapter, or (None, None) without an adapter or with --merge and no record."""
    from pipeline.core.errors import ModelNotFoundError
    from pipeline.core.run_record import read_record

    if not args.adapter:
        return None, None
    if not Path(args.adapter).exists():
        raise ModelNotFoundError(
            f"adapter folder {args.adapter} does not exist: a fine-tune writes it (<train.output_dir>/adapter); run "
            "python -m pipeline finetune first (in the kit's compose setup: make finetune, or make demo)"
        )
    if not (Path(args.adapter) / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"adapter folder {args.adapter} has no adapter_config.json: expected a peft LoRA adapter"
        )
    try:
        return read_record(args.adapter)
    except FileNotFoundError:
        if args.merge:  # merging needs no record; its BOS rule then defaults like a plain model's
            return None, None
        raise


def cmd_prepare(args: argparse.Namespace) -> int:
    """Validate data (every problem as file:line), report rows, contamination and token lengths; write demo data."""
    from pipeline.core import run_lock
    from pipeline.core.config import load_recipe
    from pipeline.data import lengths
    from pipeline.data.loading import data_paths
    from pipeline.data.questions import DataError, find_overlap, read_questions

    recipe = load_recipe(args.recipe, args.overrides)
    # Writing the demo data into a folder a run is using would change that run's data under it.
    demo = recipe.data.source == "demo"
    with run_lock.hold(Path(recipe.train.output_dir), enabled=demo):
        train_path, eval_path = data_paths(recipe)
    problems: list[str] = []
    loaded = {}
    for role, path in (("train", train_path), ("eval", eval_path)):
        if path is None:
            continue
        try:
            read = read_questions(path)
        except DataError as exc:
            problems.extend(exc.problems)
            continue
        loaded[role] = read.questions
        for warning in read.warnings if args.all_warnings else lengths.summarize(
                read.warnings, 5, hint=" (--all-warnings lists them)"):
            print(warning)
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

    summary["train_tokens"] = _print_lengths(recipe, loaded, args.all_warnings)
    print(json.dumps(summary))
    return 0


def _print_lengths(recipe: Any, loaded: dict, all_warnings: bool) -> dict:
    """Token-length statistics of the training set, and the rows that will be cut; returns the statistics."""
    from pipeline.data import lengths
    from pipeline.data.prompts import encode_example

    tokenizer = _tokenizer_for(recipe.model.name_or_path, recipe.model.trust_remote_code)
    big = 10**9  # measure untruncated lengths
    token_lengths = [len(encode_example(tokenizer, q, recipe.data.target, big, recipe.data.add_bos)["input_ids"])
                     for q in loaded["train"]]
    stats = _length_stats(token_lengths, recipe.data.max_length)
    print(f"train token lengths ({recipe.data.target} target): min {stats['min']}, median {stats['median']}, "
          f"p95 {stats['p95']}, max {stats['max']}; {stats['over_max_length']} over data.max_length "
          f"{recipe.data.max_length} (their prompt's start is cut)")
    long_rows = lengths.train_rows_over(loaded["train"], tokenizer, recipe.data.target, recipe.data.max_length)
    if "eval" in loaded:
        context = _context_length(recipe.model.name_or_path)
        long_rows += lengths.eval_rows_over(loaded["eval"], tokenizer, recipe.eval.scoring, context)
    for message in long_rows if all_warnings else lengths.summarize(long_rows, 5, hint=" (--all-warnings lists them)"):
        print(f"warning: {message}")
    return stats


def _tokenizer_for(name_or_path: str, trust_remote_code: bool):
    from pipeline.model.load import _loading, load_tokenizer, resolve_model
    from pipeline.model.tiny import RANDOM_PREFIX, train_tokenizer

    if name_or_path.startswith(RANDOM_PREFIX):
        # The random-weight smoke models use the small local tokenizer; no need to build 7 B weights to count tokens.

        return train_tokenizer(512)
    resolved = resolve_model(name_or_path)
    return _loading(resolved, lambda: load_tokenizer(resolved, trust_remote_code))


def _context_length(name_or_path: str) -> int:
    """The model's context (max_position_embeddings), which bounds evaluation prompts; 4096 when unknown."""
    from pipeline.model.load import RANDOM_PREFIX, parse_random_spec, resolve_model

    if name_or_path.startswith(RANDOM_PREFIX):
        return int(parse_random_spec(name_or_path)["max_position_embeddings"])
    config = Path(resolve_model(name_or_path)) / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_position_embeddings") or 4096)
    return 4096


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
