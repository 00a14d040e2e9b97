"""Print the table of scripts/gpu/dist_bench.sh's runs: steady tokens/s (steps 3..n), peak memory per rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SKIP = 2  # first steps: allocator warm-up, cuBLAS/NCCL initialization


def row(report_path: Path) -> str:
    t = json.loads(report_path.read_text())["training"]
    seconds = t["step_seconds"]
    tokens = t["tokens_per_step"][-len(seconds):]
    steady = sum(tokens[SKIP:]) / sum(seconds[SKIP:]) if len(seconds) > SKIP else float("nan")
    world = t["world_size"]
    peaks = [p.get("peak_gpu_memory_gib") for p in t["peak_memory_per_rank"]]
    setup = [p.get("peak_gpu_memory_gib") for p in t["setup_peak_memory_per_rank"] if p]
    return (f"{report_path.parent.name:14s} world {world}  steady {steady:9.1f} tok/s  per GPU {steady / world:9.1f}"
            f"  step {sum(seconds[SKIP:]) / max(len(seconds) - SKIP, 1):6.3f} s  train peak/GPU {peaks} GiB"
            f"  load peak/GPU {setup} GiB  final loss {t['final_loss']}")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for path in sorted(out.glob("*/report.json")):
        try:
            print(row(path))
        except Exception as exc:  # one broken run must not hide the others' rows
            print(f"{path.parent.name}: {type(exc).__name__}: {exc}")
    for log in sorted(out.glob("*.log")):
        if not (out / log.stem / "report.json").is_file():
            print(f"--- {log.name} (no report): " + " | ".join(log.read_text(errors="replace").splitlines()[-6:]))
