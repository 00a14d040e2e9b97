"""`python -m checks` fits one screen on a narrow terminal too (issue 26): a list instead of the wrapped table."""

import io

from rich.console import Console

from checks.__main__ import NARROW_COLUMNS, _print_verdict, render_list
from checks.core import PASS, SKIP, WARN, Result

SKIPPED = [Result(f"numerics.check{i}", SKIP, "", "no GPU: torch 2.13.0+cpu is a CPU-only build") for i in range(8)]
RESULTS = [Result("platform.torch", PASS, "torch 2.13.0+cpu (CPU-only build)", "vendor: none"),
           Result("platform.gpus", WARN, "0 GPUs", "no GPU: torch 2.13.0+cpu is a CPU-only build; GPU checks "
                  "below are skipped", "fine for the CPU demo; this is the kit's CPU image: for GPU fine-tuning run "
                  "the ROCm or CUDA image (KIT_VENDOR=rocm|cuda) on a GPU node"),
           *SKIPPED, *[Result(f"access.c{i}", PASS, "ok", "a detail nobody needs on a small screen") for i in range(5)]]


def test_narrow_terminal_gets_one_line_per_check_and_details_only_for_warnings():
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    assert console.width < NARROW_COLUMNS
    render_list(RESULTS, console)
    _print_verdict(RESULTS, console)
    lines = out.getvalue().splitlines()
    # title + 15 checks + the warning's detail and fix (wrapped at 80 columns) + the verdict
    assert len(lines) <= 1 + len(RESULTS) + 5 + 1, "\n".join(lines)
    assert any(line.startswith("WARN platform.gpus") for line in lines)
    assert "fix: fine for the CPU demo" in out.getvalue() and "a detail nobody needs" not in out.getvalue()
    assert all(len(line) <= 80 for line in lines)
