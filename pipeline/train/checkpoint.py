"""Training checkpoints that are either complete or absent.

A checkpoint is a folder ``<output_dir>/checkpoint-<step>`` holding everything needed to continue exactly where
the run stopped: the LoRA adapter (peft format, loadable on its own), optimizer and scheduler state, every RNG
(python, numpy, torch CPU and CUDA), the batcher's position, the step and the per-step history. It is written into
a hidden temporary folder, a ``COMPLETE`` marker goes in last, and one ``os.replace`` puts it in place: a run killed
mid-write leaves only a hidden ``.tmp-checkpoint-*`` folder, which ``latest_checkpoint`` ignores and
``clean_orphans`` removes when the next run takes over the folder.

Each checkpoint also records the recipe it was trained with and the sha256 of the data files as they were loaded
(``run.json``), so ``--resume`` can refuse to continue with other settings or other data than it claims
(pipeline/train/resume_policy.py).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from kit import atomic
from pipeline.core.errors import ResumeError
from pipeline.core.run_record import write_record

COMPLETE = "COMPLETE"
RUN_FILE = "run.json"
FULL_OPTIMIZER_FILE = "optimizer_full.pt"
TMP_PREFIX = ".tmp-checkpoint-"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses: store plain lists.
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    found = []
    if not Path(output_dir).is_dir():
        return found
    for child in Path(output_dir).iterdir():
        match = _NAME.match(child.name)
        if match and (child / COMPLETE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batcher_state: dict[str, Any],
    history: dict[str, Any],
    keep: int,
    run: Optional[dict[str, Any]] = None,
    rng_states: Optional[list[dict[str, Any]]] = None,
    adapter_state: Optional[dict[str, torch.Tensor]] = None,
    optimizer_state: Optional[dict[str, Any]] = None,
    sharding: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically, then delete all but the newest ``keep`` complete checkpoints.

    ``run`` ({"recipe": ..., "data_files": [...], "changes": [...]}) is stored as ``run.json`` for the resume policy.
    ``rng_states``: every rank's RNG state in rank order (a data-parallel run); default: this process's alone.
    Stale temporaries are not removed here: only the folder's owner may, once, when it takes the folder
    (``clean_orphans``); a save cannot tell a dead writer's temporary from a live one's.
    FSDP (pipeline/train/fsdp.py) passes the gathered ``adapter_state`` and full ``optimizer_state`` (keyed by
    parameter names), and ``sharding`` ({"strategy": "fsdp", "state_dict": "full", "world_size": N}) for resume.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    # Adapter + optimizer moments: lets a writer's opaque failure on a full disk be recognized (kit.atomic).
    expected = 3 * trainable_bytes(model)
    with atomic.folder(final, prefix=f"{TMP_PREFIX}{step}-", expected_bytes=expected) as tmp:
        if adapter_state is None:
            model.save_pretrained(tmp / "adapter")
        else:
            write_peft_adapter(model, tmp / "adapter", adapter_state)
        training = {"optimizer": optimizer.state_dict() if optimizer_state is None else None,
                    "scheduler": scheduler.state_dict(), "rng_per_rank": rng_states or [rng_state()]}
        if optimizer_state is not None:  # FSDP's full optimizer state: a file of its own, read by rank 0 alone
            _save_tensors(optimizer_state, tmp / FULL_OPTIMIZER_FILE)
        _save_tensors(training, tmp / "training_state.pt")
        facts = {"step": step, "batcher": batcher_state, "history": history}
        if sharding is not None:
            facts["sharding"] = sharding
        (tmp / "state.json").write_text(json.dumps(facts, indent=1))
        if run is not None:
            (tmp / RUN_FILE).write_text(json.dumps(run, indent=1, default=str))
        (tmp / COMPLETE).write_text(f"{step}\n")
    if keep > 0:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_peft_adapter(peft_model: Any, folder: Path, state: dict[str, torch.Tensor]) -> None:
    """``state`` (gathered LoRA tensors named as in the unwrapped peft model) in peft's format, written directly.

    Not ``save_pretrained(state_dict=...)``: peft >= 0.18 picks the adapter's entries by walking the model's modules,
    whose names under FSDP hold ``_fsdp_wrapped_module.``, so it silently kept only the LoRA tensors outside the
    decoder-layer units (lm_head) and the adapter files were nearly empty.
    """
    from safetensors.torch import save_file

    name = getattr(peft_model, "active_adapter", "default")
    name = name if isinstance(name, str) else name[0]
    # peft's file format drops the adapter's name: "...lora_A.default.weight" -> "...lora_A.weight".
    tensors = {re.sub(rf"\.{re.escape(name)}\.", ".", key): value.contiguous() for key, value in state.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_model.peft_config[name].save_pretrained(str(folder))


def trainable_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _save_tensors(obj: Any, path: Path) -> None:
    # Through a Python file object, so a failed write (full disk) surfaces as the OSError chained to torch's
    # RuntimeError; given a path, torch's C++ writer reports only "enforce fail at inline_container.cc".
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def read_state(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint: {"step", "batcher", "history"}."""
    return json.loads((Path(path) / "state.json").read_text())


def read_run_info(path: Path) -> Optional[dict[str, Any]]:
    """The recipe and data hashes a checkpoint was written with (None for checkpoints from before they were kept)."""
    file = Path(path) / RUN_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def clean_orphans(output_dir: Path) -> list[str]:
    """Remove what killed writers left in ``output_dir`` and restore interrupted replaces; return what was done.

    Call only while holding the folder's run lock (pipeline/core/run_lock.py): then no live writer can own any of it.
    """
    output_dir = Path(output_dir)
    done: list[str] = []
    if not output_dir.is_dir():
        return done
    # Names used before every temporary ended in ".tmp": ".tmp-checkpoint-*" and ".adapter-*" folders.
    for legacy in [*output_dir.glob(f"{TMP_PREFIX}*"), *output_dir.glob(".adapter-*")]:
        if legacy.is_dir() and not legacy.name.endswith((atomic.TMP_SUFFIX, atomic.ASIDE_SUFFIX)):
            shutil.rmtree(legacy)
            done.append(f"removed {legacy.name}")
    for folder in (output_dir, output_dir / "eval", output_dir / "eval-before", output_dir / "data"):
        done += atomic.clean_temporaries(folder)
    return done


def load_checkpoint(path: Path, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    rank: int = 0) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and rank ``rank``'s RNG from ``path``.

    Returns {"step", "batcher", "history", "rng_restored"}; ``rng_restored`` is False for a rank the checkpoint
    holds no RNG state for (resumed on more processes than saved it): the caller seeds that rank itself.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / "adapter" / "adapter_model.safetensors"
    state_dict = load_file(str(weights))
    result = set_peft_model_state_dict(model, state_dict)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ResumeError(
            f"{weights}: adapter has weights this model lacks ({unexpected[:3]}); expected the same lora settings"
        )
    # weights_only: the file holds only tensors and plain containers; never unpickle arbitrary objects.
    training = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    per_rank = training.get("rng_per_rank") or [training["rng"]]  # "rng": checkpoints from before per-rank state
    state = json.loads((path / "state.json").read_text())
    state["rng_restored"] = rank < len(per_rank)
    if state["rng_restored"]:
        set_rng_state(per_rank[rank])
    return state


def save_adapter(model: Any, tokenizer: Any, dest: Path, record: dict[str, Any], *,
                 adapter_state: Optional[dict[str, torch.Tensor]] = None, main: bool = True) -> None:
    """The trained adapter (peft format) with the record of how its base was loaded (evaluate --adapter reloads it
    the same way). Under FSDP the caller passes ``adapter_state``, gathered by every rank
    (``fsdp.gather_adapter``); rank 0 writes."""
    if not main:
        return
    with atomic.folder(dest, expected_bytes=trainable_bytes(model)) as tmp:
        if adapter_state is None:
            model.save_pretrained(tmp)
        else:
            write_peft_adapter(model, tmp, adapter_state)
        write_record(tmp, record)
