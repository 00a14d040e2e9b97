"""python -m checks: is this node or image fit to fine-tune on, and if not, what exactly is wrong.

Exit status: 0 when no check failed (warnings and skips allowed), 1 when one did, 2 for a bad command line or a
--json-out file that cannot be written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from checks.catalog import all_checks
from checks.core import FAIL, Context, Result, SelectionError, exit_code, run_checks, select
from kit import atomic

if TYPE_CHECKING:
    from rich.console import Console

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m checks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print a JSON list of results on stdout instead of a table")
    ap.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON results to FILE (atomically)")
    ap.add_argument("--only", action="append", default=[], metavar="NAMES",
                    help="run only these checks or groups (comma-separated, repeatable), e.g. --only platform,access")
    ap.add_argument("--skip", action="append", default=[], metavar="NAMES",
                    help="leave out these checks or groups, e.g. --skip pipeline,collectives.all_reduce")
    ap.add_argument("--require-gpu", action="store_true",
                    help="no usable GPU is a failure, not a skip (CI on GPU runners)")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    return ap.parse_args(argv)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Route everything written to file descriptor 1 (Python prints, library logs, NCCL's C-level output,
    spawned ranks) to stderr, so that --json's stdout holds the JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):  # sys.stdout need not be fd 1 (pytest, notebooks)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def log_line(r: Result) -> None:
    """One line per check on stderr while --json runs (what a CI log shows)."""
    line = f"checks: {r.name}: {r.status.upper()} {r.value}".rstrip() + f" ({r.duration:.1f} s)"
    if r.status in ("warn", "fail", "skip") and r.detail:
        line += f"\n    {r.detail}"
    if r.hint and r.status in ("warn", "fail"):
        line += f"\n    fix: {r.hint}"
    print(line, file=sys.stderr, flush=True)


# Below this many columns the four-column table wraps every detail onto several lines (62 lines for the CPU image
# at 80 columns): a list then keeps one line per check, with details only for warnings and failures.
NARROW_COLUMNS = 110


def render_list(results: list[Result], console: "Console") -> None:
    """One line per check (status, name, value); the detail and the fix under a warning or failure only."""
    from rich.text import Text

    console.print(Text("clinical-finetune-kit environment checks", style="bold"))
    for r in results:
        line = Text(f"{r.status.upper():4} ", style=_STYLE[r.status])
        line.append(f"{r.name:25} {r.value}".rstrip())
        console.print(line, overflow="fold")
        if r.status in ("warn", "fail"):
            if r.detail:
                console.print(Text(f"     {r.detail}"), overflow="fold")
            if r.hint:
                console.print(Text(f"     fix: {r.hint}", style=_STYLE[r.status]), overflow="fold")


def render_table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Piped output (CI logs, docs) gets a wide table rather than rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 150)
    if console.width < NARROW_COLUMNS:
        render_list(results, console)
        _print_verdict(results, console)
        return
    table = Table(title="clinical-finetune-kit environment checks", show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("value")
    table.add_column("detail / fix", overflow="fold")
    for r in results:
        note = Text(r.detail, style="dim" if r.status in ("pass", "skip") else "")
        if r.hint and r.status in ("warn", "fail"):
            note.append(("\n" if r.detail else "") + "fix: " + r.hint, style=_STYLE[r.status])
        table.add_row(r.name, Text(r.status.upper(), style=_STYLE[r.status]), r.value, note)
    console.print(table)
    _print_verdict(results, console)


def _print_verdict(results: list[Result], console: "Console") -> None:
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "warn", "fail", "skip")}
    verdict = "NOT fit: fix the failed checks" if counts[FAIL] else "fit to fine-tune on (no failed check)"
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" in {sum(r.duration for r in results):.1f} s"
                  f": {verdict}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    checks = all_checks()
    try:
        chosen = select(checks, args.only, args.skip)
    except SelectionError as exc:
        print(f"python -m checks: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for chk in checks:
            print(f"{chk.name:28} {chk.summary}")
        return 0
    ctx = Context(require_gpu=args.require_gpu)
    # What the checks and the libraries they call print goes to stderr: stdout carries the table or the JSON alone.
    with stdout_to_stderr():
        results = run_checks(chosen, ctx, on_result=log_line if args.json else None)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        render_table(results)
    if args.json_out:
        try:
            atomic.write_text(args.json_out, json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        except OSError as exc:  # the results are printed already; say which file failed rather than a traceback
            print(f"python -m checks: cannot write --json-out {args.json_out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
