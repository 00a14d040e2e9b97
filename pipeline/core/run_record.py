"""The adapter's run record: how the base model was loaded when the adapter was trained, and the encoding rule.

An adapter's accuracy depends on the base it runs on: LoRA trained on an NF4 base scores differently merged into
a bf16 base (the 4-bit rounding the adapter learned to compensate is gone). ``finetune`` scores its final model on
the base it trained on, so ``evaluate --adapter`` must, by default, load that same base to report the same number.
``finetune`` writes ``run_record.json`` into the adapter folder; ``evaluate`` reads it (or, for adapters saved
before the record existed, the ``report.json`` of the run next to the adapter folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import ModelNotFoundError, RecipeError

RECORD_NAME = "run_record.json"
RECORD_VERSION = 1


def build_record(recipe: Any, info: Any) -> dict[str, Any]:
    """The record for an adapter trained by ``recipe`` on the base ``info`` (a model.ModelInfo) describes."""
    nf4 = info.quantization_path == "nf4"
    return {
        "record_version": RECORD_VERSION,
        "base_model": recipe.model.name_or_path,
        "quantization_path": info.quantization_path,
        # nf4: 4-bit weights computed in compute_dtype; otherwise the dtype of the unquantized base weights.
        "base_dtype": info.base_dtype,
        "compute_dtype": recipe.quantization.compute_dtype if nf4 else info.base_dtype,
        "double_quant": recipe.quantization.double_quant if nf4 else None,
        "attention": info.attention,
        "trust_remote_code": recipe.model.trust_remote_code,
        "add_bos": recipe.data.add_bos,
        "scoring": recipe.eval.scoring,
    }


def write_record(adapter_dir: Path, record: dict[str, Any]) -> None:
    """Write the record into an adapter folder being assembled (the caller renames the folder into place)."""
    (Path(adapter_dir) / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_record(adapter_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """(record, the file it came from) for an adapter folder; FileNotFoundError naming what was looked for."""
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / RECORD_NAME
    if path.is_file():
        return _parse(path, json.loads(path.read_text(encoding="utf-8"))), path
    report = adapter_dir.parent / "report.json"
    if report.is_file():
        data = json.loads(report.read_text(encoding="utf-8"))
        model, recipe = data.get("model") or {}, data.get("recipe") or {}
        quant = recipe.get("quantization") or {}
        nf4 = model.get("quantization_path") == "nf4"
        return _parse(report, {
            "record_version": RECORD_VERSION,
            "base_model": model.get("name_or_path"),
            "quantization_path": model.get("quantization_path"),
            "base_dtype": model.get("base_dtype"),
            "compute_dtype": quant.get("compute_dtype") if nf4 else model.get("base_dtype"),
            "double_quant": quant.get("double_quant") if nf4 else None,
            "attention": model.get("attention"),
            "trust_remote_code": (recipe.get("model") or {}).get("trust_remote_code", False),
            # Reports from before data.add_bos: those runs put BOS before every prompt when the tokenizer had one.
            "add_bos": (recipe.get("data") or {}).get("add_bos", "always"),
            "scoring": (recipe.get("eval") or {}).get("scoring"),
        }), report
    raise ModelNotFoundError(
        f"adapter folder {adapter_dir} has no {RECORD_NAME} and {report} does not exist: expected the record "
        "finetune writes of how the base was loaded in training. Pass --merge to score the adapter merged into a "
        "bf16/fp32 base instead (a different number from the one the run reported)"
    )


def _parse(where: Path, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise RecipeError(f"{where}: expected a JSON object, got {type(record).__name__}")
    expected = {"quantization_path": str, "base_dtype": str, "compute_dtype": str}
    for key, kind in expected.items():
        if not isinstance(record.get(key), kind):
            raise RecipeError(f"{where}: key {key!r} is {record.get(key)!r}, expected a string such as 'nf4' or 'fp32'")
    if record.get("add_bos") not in ("auto", "always", "never"):
        raise RecipeError(f"{where}: key 'add_bos' is {record.get('add_bos')!r}, expected 'auto', 'always' or 'never'")
    return record
