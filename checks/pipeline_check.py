"""The pipeline end to end: a two-step QLoRA fine-tune of a tiny random Llama, on the GPU when there is one.

It calls the pipeline's own API (pipeline.model.tiny, pipeline.data.demo, pipeline.finetune), so it tests the code users
run, not a copy of it. On a GPU the 4-bit NF4 path is mandatory (quantization.on_unsupported=error): a GPU image
that silently falls back to bf16 LoRA is not fit for QLoRA. On a CPU it runs too (it takes seconds) and reports
which path the pipeline took there.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

from checks import thresholds as T
from checks.core import FAIL, PASS, Context, Result, check
from checks.gpu import gpu_skip_reason

NAME = "pipeline.qlora"
# Lines of the fine-tune's own output shown when it fails (the whole log stays in a file named in the result).
TAIL_LINES = 15


def recipe_overrides(model_dir: Path, train_file: Path, out_dir: Path, on_gpu: bool) -> list[str]:
    common = [
        f"model.name_or_path={model_dir}",
        f"data.train={train_file}",
        "data.source=files",
        "data.max_length=128",
        "lora.r=8",
        "lora.alpha=16",
        "lora.dropout=0.0",
        "quantization.mode=nf4",
        f"train.steps={T.PIPELINE_STEPS}",
        "train.batch_size=2",
        "train.optimizer=adamw",
        "train.warmup_steps=0",
        "train.checkpoint_every=0",
        "train.log_every=1",
        f"train.output_dir={out_dir}",
    ]
    if on_gpu:
        return common + ["quantization.on_unsupported=error", "quantization.compute_dtype=bfloat16",
                         "train.device=cuda", "train.precision=bf16"]
    return common + ["quantization.on_unsupported=fallback", "train.device=cpu", "train.precision=fp32"]


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of the run report worth keeping in the checks' JSON (the rest names temporary paths)."""
    model = report.get("model") or {}
    training = report.get("training") or {}
    return {
        "quantization_path": report.get("quantization_path"),
        "steps": report.get("steps"),
        "final_loss": report.get("final_loss"),
        "quantization_reason": model.get("quantization_reason"),
        "attention": model.get("attention"),
        "adapter_gradient_check": training.get("adapter_gradient_check"),
        "tokens_per_second": training.get("tokens_per_second"),
        "libraries": (report.get("environment") or {}).get("libraries"),
    }


def judge(report: dict[str, Any], on_gpu: bool) -> Result:
    path = report.get("quantization_path")
    steps = report.get("steps")
    loss = report.get("final_loss")
    value = f"{path}, {steps} steps, loss {loss:.3f}" if isinstance(loss, (int, float)) else f"{path}, {steps} steps"
    problems = []
    if steps != T.PIPELINE_STEPS:
        problems.append(f"ran {steps} steps, expected {T.PIPELINE_STEPS}")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        problems.append(f"final loss {loss!r} is not a finite number")
    if on_gpu and path != "nf4":
        problems.append(f"quantization path {path!r}: the 4-bit NF4 base did not train on the GPU")
    if problems:
        return Result(NAME, FAIL, value, "; ".join(problems),
                      hint="run the same fine-tune with python -m pipeline (see docs/pipeline.md) for the full log; "
                           "check numerics.bnb_nf4 above", data=_summary(report))
    where = "GPU, NF4 4-bit base" if on_gpu else f"CPU, quantization path {path} (the GPU path is NF4)"
    return Result(NAME, PASS, value, f"tiny Llama, {where}", data=_summary(report))


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Send everything written to file descriptors 1 and 2 (the pipeline's data warnings about its own generated
    questions, library warnings, progress bars, C-level output) into ``log``: none of it is about the user's
    node, and it pushed the table off the screen. The result says where the log is when the run fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        # Line-buffered: Python's writes and the fds' writes land in the file in about the order they were made.
        with open(log, "w", buffering=1, encoding="utf-8", errors="replace") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            # sys.stdout/sys.stderr need not be fds 1 and 2 (pytest, notebooks): redirect the objects too.
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _tail(log: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    # Progress bars redraw with carriage returns: keep the last state of each line.
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()][-lines:]


def _kept_log(result: Result, log: Path) -> Result:
    """A failed run keeps its log and shows its last lines on stderr; a passed one deletes it."""
    if result.status != FAIL:
        result.data["output_lines"] = len(_tail(log, lines=10**9))
        log.unlink(missing_ok=True)
        return result
    tail = _tail(log)
    print(f"{NAME}: the fine-tune's last {len(tail)} lines (all of them: {log}):", file=sys.stderr)
    print("\n".join(f"    {line}" for line in tail), file=sys.stderr, flush=True)
    result.detail += f"; full output: {log}"
    result.data["output_log"] = str(log)
    return result


@check("pipeline.qlora")
def qlora(ctx: Context) -> Result:
    """A two-step QLoRA fine-tune of a tiny model through the pipeline (NF4 on a GPU)."""
    try:
        from pipeline.core.config import load_recipe
        from pipeline.data.demo import write_demo_data
        from pipeline.finetune import finetune
        from pipeline.model.tiny import build_tiny_model
    except ImportError as exc:
        return Result(NAME, FAIL, "pipeline not importable", f"{type(exc).__name__}: {exc}",
                      hint="run from the kit's root (or the image's /opt/kit) so that 'pipeline' imports")
    on_gpu = gpu_skip_reason(ctx) is None
    # No hub: a lookup without this hangs ~50 s before failing on air-gapped hosts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fd, name = tempfile.mkstemp(prefix="checks-pipeline-", suffix=".log")
    os.close(fd)
    log = Path(name)
    with tempfile.TemporaryDirectory(prefix="checks-pipeline-") as tmp:
        root = Path(tmp)
        try:
            with output_to(log):
                model_dir = build_tiny_model(root / "model")
                train_file, _ = write_demo_data(root / "data")
                recipe = load_recipe(None, recipe_overrides(model_dir, train_file, root / "run", on_gpu))
                report = finetune(recipe)
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            return _kept_log(Result(NAME, FAIL, type(exc).__name__,
                                    f"{exc} (at {Path(last.filename).name}:{last.lineno})",
                                    hint="the fine-tune itself failed: run python -m pipeline with a tiny model "
                                         "for the full traceback"), log)
    return _kept_log(judge(report, on_gpu), log)
