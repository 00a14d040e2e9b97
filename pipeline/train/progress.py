"""Training progress: a rich progress bar on a terminal, plain log lines elsewhere (CI logs, files, --plain)."""

from __future__ import annotations

import sys
import time
from typing import Optional


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """``update(step, loss, lr, tokens_per_s)`` after each optimizer step; ``close()`` at the end.

    Plain mode prints one line every ``log_every`` steps (and the last), so a log file stays readable; rich mode
    redraws one bar in place. ``enabled=False`` (ranks other than 0) prints nothing.
    """

    def __init__(self, total_steps: int, *, start_step: int = 0, log_every: int = 10, plain: Optional[bool] = None,
                 enabled: bool = True):
        self.total = total_steps
        self.start_step = start_step
        self.log_every = max(1, log_every)
        self.enabled = enabled
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self.started = time.monotonic()
        self._bar = None
        self._task = None
        if enabled and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, loss="-", lr="-", tps="-")

    def eta_seconds(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self.started) / done * (self.total - step)

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tps=f"{tokens_per_s:,.0f}")
        elif step % self.log_every == 0 or step == self.total:
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
                f"ETA {_eta(self.eta_seconds(step))}",
                flush=True,
            )

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        from pipeline.core.redact import redact

        message = redact(message)
        if self._bar is not None:
            self._bar.console.print(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
