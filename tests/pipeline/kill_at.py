"""Run ``python -m pipeline ...`` in this process, killed with os._exit(137) at one named write point.

    python -m tests.pipeline.kill_at POINT NAME [N] -- finetune --recipe R ...

kills the process the N-th time (default 1) kit.atomic reaches POINT ("folder:aside", "write_text:written", ...)
for a destination called NAME ("adapter", "report.json", "checkpoint-4"). Exit status 137 is what a SIGKILL gives,
and nothing after the point runs: no finally blocks, no atexit, no flush, as with a real kill.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kit import atomic


def main() -> int:
    split = sys.argv.index("--")
    point, name, *rest = sys.argv[1:split]
    wanted = int(rest[0]) if rest else 1
    seen = {"n": 0}

    def reached(where: str, dest: Path) -> None:
        if where == point and Path(dest).name == name:
            seen["n"] += 1
            if seen["n"] == wanted:
                sys.stdout.flush()
                os._exit(137)

    atomic._reached = reached
    from pipeline.__main__ import main as pipeline_main

    return pipeline_main(sys.argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
