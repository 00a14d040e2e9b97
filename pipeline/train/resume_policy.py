"""What ``--resume`` may change, and the record of what it did change.

A resumed run restores the optimizer and scheduler state, so ``--resume train.lr=5e-3`` used to keep the
checkpoint's learning rates while report.json said 0.005. Now every checkpoint stores its recipe and the sha256
of the data it loaded (``run.json``), and on resume:

- keys that do not touch the optimization (logging, checkpoint cadence, evaluation, device) may change freely;
  changes are still recorded;
- keys that alter the optimization (learning rate, schedule, steps, model, quantization, LoRA scaling, data
  content and encoding) are refused unless named in ``--allow-changes``; allowed ones are then really applied
  (``apply_to_optimizer``) and recorded with the step they took effect from;
- keys a checkpoint cannot continue under at all (LoRA shape, batch size, seed, optimizer type, batch grouping,
  data source) are refused even when allowed: the saved weights, optimizer state or batch order depend on them.

Data files are compared by content (sha256 of the bytes loaded), not by path: a moved file with the same bytes
is the same data; a file edited in place is not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

from pipeline.core.errors import RecipeError, ResumeError

FREE_KEYS = (
    "model.attention", "model.gradient_checkpointing", "model.trust_remote_code",
    "data.eval", "data.eval.sha256",
    "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.output_dir", "train.device",
    # How long a collective may wait before the run fails: a resume after a lost node often wants another value.
    "distributed.timeout_minutes",
    "eval.",
)
NEVER_KEYS = (
    "lora.r", "lora.target_modules", "train.batch_size", "train.seed", "train.optimizer", "data.group_by_length",
    "data.source",
)
_WHY_NEVER = {
    "lora.r": "the saved adapter matrices have the old rank",
    "lora.target_modules": "the saved adapter covers the old modules",
    "train.batch_size": "the saved batch order is for the old global batch, train.batch_size x processes",
    "train.seed": "the saved batch order and random states come from the old seed",
    "train.optimizer": "the saved optimizer state belongs to the old optimizer",
    "data.group_by_length": "the saved batch order depends on it",
    "data.source": "the saved batch order indexes the old data",
}


@dataclass
class Change:
    key: str
    checkpoint: Any
    now: Any
    from_step: int
    kind: str  # "free" | "allowed" | "refused" | "never"

    def describe(self) -> str:
        return f"{self.key}: checkpoint {self.checkpoint!r}, now {self.now!r}"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_info(recipe: dict[str, Any], data_files: dict[str, dict[str, Any]],
             changes: Optional[list[dict[str, Any]]] = None, world_size: int = 1) -> dict[str, Any]:
    """What a checkpoint records about its run (``run.json``): recipe, data facts by role, changes so far, and the
    number of processes (the global batch is ``train.batch_size`` x ``world_size``)."""
    return {"recipe": recipe, "data_files": data_files, "changes": list(changes or []), "world_size": world_size}


def compare(stored: dict[str, Any], recipe: dict[str, Any], data_files: dict[str, dict[str, Any]], *,
            step: int, allowed: Iterable[str] = (), world_size: int = 1) -> list[Change]:
    """Every difference between a checkpoint's ``run.json`` and this run, classified against ``allowed``.

    ``train.batch_size`` is per process: resuming on another number of processes with the same global batch
    (docs/distributed.md) is no change; the batch order is checked against the global batch by the batcher.
    """
    allowed = set(allowed)
    before = flatten(stored.get("recipe", {}))
    now = flatten(recipe)
    if "train.batch_size" in before and "train.batch_size" in now:
        before["train.batch_size"] = before["train.batch_size"] * int(stored.get("world_size") or 1)
        now["train.batch_size"] = now["train.batch_size"] * world_size
    # Data files are compared by content below; their paths may move freely.
    for key in ("data.train", "data.eval"):
        before.pop(key, None)
        now.pop(key, None)
    for role in ("train", "eval"):
        old = (stored.get("data_files") or {}).get(role) or {}
        new = data_files.get(role) or {}
        if old.get("sha256") != new.get("sha256"):
            before[f"data.{role}.sha256"], now[f"data.{role}.sha256"] = old.get("sha256"), new.get("sha256")
    changes = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) == now.get(key):
            continue
        changes.append(Change(key, before.get(key), now.get(key), step, _kind(key, allowed)))
    return changes


def _kind(key: str, allowed: set[str]) -> str:
    if key.startswith(FREE_KEYS):
        return "free"
    if key.startswith(NEVER_KEYS):
        return "never"
    base = key[: -len(".sha256")] if key.endswith(".sha256") else key
    return "allowed" if key in allowed or base in allowed else "refused"


def check_allowed_keys(allowed: Iterable[str], recipe: dict[str, Any]) -> None:
    """``--allow-changes`` names must be recipe keys: a typo must not silently allow nothing."""
    known = set(flatten(recipe))
    unknown = sorted(k for k in allowed if k not in known)
    if unknown:
        raise RecipeError(f"--allow-changes {unknown[0]!r}: not a recipe key, expected section.key such as train.lr")


def enforce(changes: list[Change], checkpoint: str) -> None:
    """Raise ResumeError naming every change the resume may not make."""
    never = [c for c in changes if c.kind == "never"]
    refused = [c for c in changes if c.kind == "refused"]
    if not never and not refused:
        return
    lines = [f"--resume from {checkpoint} would continue a different run than the checkpoint holds:"]
    lines += [f"  {c.describe()} (cannot change on resume: {_WHY_NEVER[_never_prefix(c.key)]})" for c in never]
    lines += [f"  {c.describe()}" for c in refused]
    if refused:
        keys = ",".join(sorted({c.key[: -len('.sha256')] if c.key.endswith('.sha256') else c.key for c in refused}))
        lines.append(f"To continue with the new values from step {refused[0].from_step}, rerun with "
                     f"--allow-changes {keys} (the report records the change);")
    lines.append("to keep the checkpoint's settings, drop the changed overrides; for a fresh run, use another "
                 "train.output_dir or --overwrite")
    raise ResumeError("\n".join(lines))


def _never_prefix(key: str) -> str:
    return next(p for p in NEVER_KEYS if key.startswith(p))


def apply_to_optimizer(optimizer: Any, scheduler: Any, lr: float, weight_decay: float) -> None:
    """Make an allowed lr / weight-decay change real: restored optimizer and scheduler states carry the old ones.

    The schedule's shape (steps, warmup, kind) already comes from this run's recipe: a LambdaLR's state stores
    its position and base rates, not its lambda.
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["weight_decay"] = weight_decay
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:  # pragma: no cover - get_scheduler returns LambdaLR for every schedule we offer
        raise TypeError(f"cannot re-base {type(scheduler).__name__}")
    rates = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, lambdas, strict=False)]
    for group, rate in zip(optimizer.param_groups, rates, strict=False):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() returns; the loop logs the lr of the next step from it


def as_records(changes: list[Change]) -> list[dict[str, Any]]:
    return [asdict(c) for c in changes]
