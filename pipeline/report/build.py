"""The run report: what ran, on what, from which data, and how it went (report.json + a short report.md).

Written for the person who has to trust or reproduce a result later: the resolved recipe, sha256 of every data
file, the library and driver versions, which quantization and attention path really ran and why. Secrets never
land here: nothing reads the environment except an allowlist of device-selection variables, and a final pass
replaces the value of any secret-looking environment variable (tokens, passwords, keys) wherever it appears.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from kit import atomic
from kit.digest import sha256_file  # noqa: F401  (pipeline.report.build.sha256_file, as before)
from kit.manifest import image_facts
from pipeline.core.redact import redact

# Device-selection variables worth recording (they change which GPU ran); nothing else from the environment.
_ENV_ALLOWLIST = (
    "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION",
    "WORLD_SIZE", "PYTORCH_CUDA_ALLOC_CONF",
)
_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "flash-attn", "tokenizers", "safetensors")


def data_file_facts(path: Path, rows: int) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "rows": rows, "bytes": Path(path).stat().st_size}


def library_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def device_facts(device: torch.device) -> dict[str, Any]:
    """Device and backend: CUDA or HIP version, GPU name and architecture (sm_XY on CUDA, gfx on ROCm)."""
    facts: dict[str, Any] = {
        "device": str(device),
        "backend": "rocm" if torch.version.hip else ("cuda" if torch.version.cuda else "cpu"),
        "cuda_version": torch.version.cuda,
        "hip_version": torch.version.hip,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in _ENV_ALLOWLIST if k in os.environ},
    }
    if torch.cuda.is_available():
        index = device.index if device.type == "cuda" and device.index is not None else 0
        props = torch.cuda.get_device_properties(index)
        facts.update(
            gpu_name=props.name,
            gpu_arch=getattr(props, "gcnArchName", None) if torch.version.hip else f"sm_{props.major}{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
        )
    return facts


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2), "source":
                "torch.cuda.max_memory_allocated"}
    # Linux reports ru_maxrss in KiB (macOS in bytes); this whole process's peak resident set.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return {"peak_rss_gib": round(rss * scale / 2**30, 2), "source": "getrusage ru_maxrss"}


def utc_now() -> str:
    """The current UTC time as the report writes it (ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment_facts(device: torch.device) -> dict[str, Any]:
    # image: the manifest of the image this ran in (kit/manifest.py), None outside an image.
    return {"device": device_facts(device), "libraries": library_versions(), "image": image_facts()}


def build_report(
    command: str,
    *,
    started_at: str,
    model: dict[str, Any],
    device: torch.device,
    data: dict[str, Any],
    evaluation: Optional[dict[str, Any]] = None,
    training: Optional[dict[str, Any]] = None,
    summary: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The one report schema of both commands: an accuracy is only evidence with what produced it.

    ``summary`` holds the command's headline keys (finetune: status, steps, final loss, metrics, recipe; evaluate:
    wall time); ``training`` is present only for a fine-tune; ``eval`` is always present (None without eval data).
    """
    report: dict[str, Any] = {"command": command, "started_at": started_at, "finished_at": utc_now()}
    report.update(summary or {})
    report.update(model=model, environment=environment_facts(device), data=data)
    if training is not None:
        report["training"] = training
    report["eval"] = evaluation
    return report


def write_report(output_dir: Path, report: dict[str, Any]) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=False, default=str)
    atomic.write_text(output_dir / "report.json", redact(text) + "\n")
    # Intervals, breakdowns, calibration, curves (figures/, tensorboard/, analysis.json beside report.md).
    from pipeline.report.analysis import write_run_analysis

    analysis_md = write_run_analysis(output_dir, report, redact=redact)
    atomic.write_text(output_dir / "report.md", redact(render_markdown(report) + "\n" + analysis_md))


def _acc(metrics: Optional[dict[str, Any]]) -> str:
    if not metrics:
        return "-"
    text = f"{metrics.get('accuracy', float('nan')):.3f}"
    # Issue 15: every accuracy with its 95% Wilson interval.
    from pipeline.report.stats import wilson_interval

    if metrics.get("count") and metrics.get("correct") is not None:
        text += " (95% CI {:.3f}–{:.3f})".format(*wilson_interval(metrics["correct"], metrics["count"]))
    if metrics.get("acc_norm") is not None:
        text += f" (acc_norm {metrics['acc_norm']:.3f})"
    return text + f" on {metrics.get('count', '?')} questions"


def render_markdown(report: dict[str, Any]) -> str:
    model = report.get("model", {})
    env = report.get("environment", {})
    dev = env.get("device", {})
    train = report.get("training", {})
    libs = env.get("libraries", {})
    if dev.get("gpu_name"):
        gpu = f"{dev.get('gpu_name')} ({dev.get('gpu_arch')})"
    else:
        gpu = f"CPU ({dev.get('cpu_count')} cores)"
    backend = dev.get("backend")
    backend_version = dev.get("hip_version") or dev.get("cuda_version") or "-"
    lines = [
        f"# Run report: {report.get('command', 'finetune')}",
        "",
        f"- Started {report.get('started_at')} , finished {report.get('finished_at')}",
        f"- Model: `{model.get('name_or_path')}`" + (" — **RANDOM WEIGHTS (smoke run, accuracy meaningless)**"
                                                     if model.get("random_weights") else ""),
    ]
    if train:
        lines += [
            f"- Parameters: {model.get('total_params', 0):,} total, "
            f"{model.get('trainable_params', 0):,} trainable (LoRA)",
            f"- Quantization path: **{model.get('quantization_path')}** — {model.get('quantization_reason')}",
            f"- Attention: **{model.get('attention')}** — {model.get('attention_reason')}",
            f"- Gradient checkpointing: {model.get('gradient_checkpointing')}; precision {train.get('precision')}",
        ]
    else:
        lines.append(f"- Adapter: `{model.get('adapter')}`; weights {model.get('dtype')}")
    lines += [
        f"- Device: {gpu}, backend {backend} {backend_version}, world size {train.get('world_size', 1)}",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items() if v),
        "",
    ]
    if train:
        lines += [
            "| steps | wall time (s) | tokens/s | peak memory | final loss |",
            "|---|---|---|---|---|",
            f"| {train.get('steps')} | {train.get('wall_time_s')} | {train.get('tokens_per_second')} | "
            f"{_memory(train.get('peak_memory', {}))} | {train.get('final_loss')} |",
            "",
        ]
    ev = report.get("eval") or {}
    if ev:
        lines += [f"Evaluation ({ev.get('scoring')} scoring, `{ev.get('file')}`):", ""]
        if "before" in ev:
            lines.append(f"- before training: {_acc(ev.get('before'))}")
        if "after" in ev:
            lines.append(f"- after training: {_acc(ev.get('after'))}")
        if "result" in ev:
            lines.append(f"- accuracy: {_acc(ev.get('result'))}")
        lines.append("")
    data = report.get("data", {})
    if data.get("files"):
        lines += ["Data files:", ""] + [
            f"- `{f['path']}`: {f['rows']} rows, sha256 `{f['sha256']}`" for f in data["files"]
        ] + [""]
    if data.get("contamination"):
        lines += [f"Warning: {data['contamination']} evaluation questions also occur in the training file.", ""]
    return "\n".join(lines)


def _memory(peak: dict[str, Any]) -> str:
    if "peak_gpu_memory_gib" in peak:
        return f"{peak['peak_gpu_memory_gib']} GiB GPU"
    if "peak_rss_gib" in peak:
        return f"{peak['peak_rss_gib']} GiB RSS"
    return "-"
