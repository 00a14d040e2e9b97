"""Finding, loading and adapting the model: which weights, which quantization path, which attention, LoRA.

Every decision here is made at run time from what the machine really has, and recorded with its reason in
``ModelInfo`` (which lands in the run report), so a report never claims a 4-bit or FlashAttention run that did
not happen:

- quantization: NF4 4-bit through bitsandbytes where 4-bit can train (a GPU with a working bitsandbytes backend);
  elsewhere ``quantization.on_unsupported`` decides: "error" refuses, "fallback" trains LoRA on a bf16/fp32 base.
- attention: FlashAttention 2 where ``flash_attn`` imports, the device is a GPU and the dtype is 16-bit; SDPA else.
- the adapter-gradient guard (``adapters_without_gradient``) is applied by train.py before the first optimizer
  step: every LoRA matrix must receive a non-zero gradient, or the run refuses / falls back.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from kit import atomic
from pipeline import smollm2
from pipeline.config import Recipe

RANDOM_PREFIX = "random:"
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"

# LLaMA-2-7B's shape (Meta's config.json for Llama-2-7b-hf), for GPU smoke runs without downloading weights.
RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
}


class UnsupportedError(RuntimeError):
    """The recipe asks for something this machine cannot do (and the recipe says not to fall back)."""


class AdapterGradientError(UnsupportedError):
    """LoRA adapters received no gradient: training would change nothing."""


@dataclass
class ModelInfo:
    name_or_path: str
    resolved_path: str
    random_weights: bool
    device: str
    base_dtype: str
    quantization_path: str  # "nf4" | "bf16-fallback" | "fp32-fallback" | "none-bf16" | "none-fp32" | ...
    quantization_reason: str
    attention: str
    attention_reason: str
    gradient_checkpointing: bool
    total_params: int = 0
    trainable_params: int = 0
    lora_modules: list[str] = field(default_factory=list)
    kernels: str = "none"  # "liger" | "none" (pipeline/kernels.py)
    kernels_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Where the weights come from


def resolve_model(name_or_path: str) -> str:
    """A local folder as-is; the ``smollm2-135m-instruct`` alias converted once into the cache; ``random:<preset>``
    built once into the cache; anything else is passed to ``from_pretrained`` (a hub id, where a hub is reachable).
    """
    if name_or_path == smollm2.ALIAS:
        return str(smollm2.ensure_converted())
    if name_or_path.startswith(RANDOM_PREFIX):
        return str(build_random_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json: expected a Hugging Face checkpoint")
        return str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name_or_path} does not exist")
    return name_or_path


def parse_random_spec(spec: str) -> dict[str, Any]:
    """``random:llama2-7b`` or ``random:llama2-7b:num_hidden_layers=2,hidden_size=256,...`` -> LlamaConfig kwargs.

    The overrides let the CPU tests run the very same path with a scaled-down shape.
    """
    body = spec[len(RANDOM_PREFIX):]
    preset, _, extra = body.partition(":")
    if preset not in RANDOM_PRESETS:
        raise ValueError(f"model {spec!r}: unknown random preset {preset!r}, expected one of {sorted(RANDOM_PRESETS)}")
    shape = dict(RANDOM_PRESETS[preset])
    for item in filter(None, (p.strip() for p in extra.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in shape:
            raise ValueError(f"model {spec!r}: override {item!r} must be one of {sorted(shape)}=<integer>")
        shape[key] = float(value) if key == "rms_norm_eps" else int(value)
    return shape


def build_random_model(spec: str, seed: int = 0) -> Path:
    """Save a LLaMA-shaped model with RANDOM weights (bf16) and a small local tokenizer into the cache, once.

    For smoke runs of the full 7B memory and throughput path without downloading weights. A marker file makes
    ``ModelInfo.random_weights`` true, so the report can never pass such a run off as a real model.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.tiny import train_tokenizer

    shape = parse_random_spec(spec)
    name = "random-" + spec[len(RANDOM_PREFIX):].replace(":", "-").replace(",", "-").replace("=", "")
    dest = smollm2.cache_dir() / "models" / f"{name}-seed{seed}"
    if (dest / RANDOM_MARKER).is_file():
        return dest
    tokenizer = train_tokenizer(512)
    config = LlamaConfig(
        **shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    # Built on the GPU when there is one: initializing 6.7 B parameters on a CPU takes minutes.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with atomic.folder(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _plain_tokenizer_class(tmp)
        (tmp / RANDOM_MARKER).write_text(
            f"RANDOM weights in the shape {spec} (seed {seed}); for memory/throughput smoke runs only.\n"
        )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the 13.5 GB back before the 4-bit load needs it
    return dest


def _checkpointing_active(model: Any) -> bool:
    # transformers 5.x renamed the flag (the old name warns and goes in v6); 4.57 has only the old one.
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else (
        "is_gradient_checkpointing")
    return bool(getattr(model, name, False))


def _plain_tokenizer_class(folder: Path) -> None:
    # transformers 5.x records "TokenizersBackend", which 4.57's AutoTokenizer cannot load.
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2))


def _loading(name: str, load: Any) -> Any:
    """Run a from_pretrained call; a hub id on an offline host becomes a short, actionable message."""
    try:
        return load()
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(
            f"cannot load model {name!r}: {first[:300].rstrip('.')}. Expected a local checkpoint folder, "
            "'smollm2-135m-instruct', or a hub id on a host that can reach the hub (HF_HUB_OFFLINE unset)"
        ) from exc


def is_random(resolved_path: str) -> bool:
    return (Path(resolved_path) / RANDOM_MARKER).is_file()


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model's tokenizer with a pad token (EOS when the model has none: labels mask padding anyway).

    transformers 4.57's ``AutoTokenizer`` cannot read a tokenizer saved by 5.x (it names ``TokenizersBackend``);
    ``PreTrainedTokenizerFast`` reads the same ``tokenizer.json`` in both versions.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, AttributeError, KeyError, OSError) as exc:
        if not (Path(path) / "tokenizer.json").is_file():
            raise
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        if tokenizer is None:  # pragma: no cover - defensive
            raise exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# Run-time choices


def choose_device(requested: str) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "cuda":
        raise UnsupportedError("train.device is 'cuda' but torch sees no GPU (torch.cuda.is_available() is False)")
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def base_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """The dtype of unquantized base weights: the recipe's, or bf16 on GPUs that have it and fp32 on CPUs
    (bf16 on a CPU trains ~20% faster but scores a little worse, and the demo model is small enough for fp32)."""
    if recipe.model.dtype != "auto":
        return _DTYPES[recipe.model.dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def choose_attention(requested: str, device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """(attn_implementation, why). FlashAttention 2 only runs on GPUs in 16-bit; SDPA runs everywhere."""
    has_fa = importlib.util.find_spec("flash_attn") is not None
    fa_ok = False
    if has_fa:
        try:
            import flash_attn  # noqa: F401  (a wheel built for another torch fails here, not at find_spec)

            fa_ok = True
        except Exception as exc:  # ImportError, OSError (undefined symbol) ...
            why_not = f"flash_attn is installed but does not import ({type(exc).__name__}: {str(exc)[:120]})"
    else:
        why_not = "flash_attn is not installed"
    if requested in ("sdpa", "eager"):
        return requested, f"model.attention is {requested!r}"
    usable = fa_ok and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
    if requested == "flash_attention_2":
        if not usable:
            reason = why_not if not fa_ok else f"device {device.type} / dtype {_SHORT.get(dtype, dtype)}"
            raise UnsupportedError(
                f"model.attention is 'flash_attention_2' but it cannot run here: {reason}; "
                "FlashAttention 2 needs the flash_attn package, a GPU and a bf16/fp16 model. Use attention: auto"
            )
        return "flash_attention_2", "model.attention is 'flash_attention_2'"
    if usable:
        return "flash_attention_2", "auto: flash_attn imports, GPU, 16-bit compute"
    if not fa_ok:
        return "sdpa", f"auto: {why_not}"
    return "sdpa", f"auto: FlashAttention 2 needs a GPU and 16-bit compute (device {device.type}, {_SHORT.get(dtype)})"


def four_bit_support(recipe: Recipe, device: torch.device) -> Optional[str]:
    """None when NF4 4-bit can train here, else the reason it cannot."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    if device.type == "cpu" and not recipe.quantization.allow_cpu:
        return (
            "the device is a CPU: bitsandbytes' CPU 4-bit layers are slow there and an earlier test saw LoRA "
            "adapters on them get zero gradient ('gemv_4bit has no autograd kernel'); set quantization.allow_cpu=true "
            "to try anyway (the adapter-gradient guard still checks)"
        )
    try:
        # A real round trip on the device: catches a bitsandbytes build without a backend for this GPU (e.g. a
        # CUDA-only wheel on ROCm), which imports fine and fails at the first kernel.
        import bitsandbytes.functional as bnbf

        probe = torch.randn(64, 64, device=device, dtype=torch.float32)
        packed, state = bnbf.quantize_4bit(probe, quant_type="nf4")
        restored = bnbf.dequantize_4bit(packed, state)
        if not torch.isfinite(restored).all() or (restored - probe).abs().mean() > 0.5:
            return "bitsandbytes' NF4 round trip on this device gave wrong values"
    except Exception as exc:
        return f"bitsandbytes cannot run 4-bit on {device.type}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_for_training(
    recipe: Recipe, device: torch.device, *, force_fallback: Optional[str] = None
) -> tuple[Any, Any, ModelInfo]:
    """(peft model in train mode on ``device``, tokenizer, ModelInfo).

    ``force_fallback`` (a reason) skips 4-bit: train.py passes it when the adapter-gradient guard found adapters
    without gradient on the 4-bit path and the recipe allows falling back.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(recipe.model.name_or_path)
    tokenizer = _loading(resolved, lambda: load_tokenizer(resolved, recipe.model.trust_remote_code))

    use_4bit = False
    if recipe.quantization.mode == "nf4":
        reason_not = force_fallback or four_bit_support(recipe, device)
        if reason_not is None:
            use_4bit = True
            quant_reason = f"NF4 4-bit base through bitsandbytes on {device.type}"
        elif recipe.quantization.on_unsupported == "error":
            raise UnsupportedError(
                f"quantization.mode is 'nf4' but 4-bit cannot train here: {reason_not}. "
                "Run on a GPU, or set quantization.on_unsupported=fallback to train LoRA on a bf16/fp32 base"
            )
        else:
            quant_reason = f"fallback from nf4: {reason_not}"
    else:
        quant_reason = "quantization.mode is 'none'"

    if use_4bit:
        dtype = _DTYPES[recipe.quantization.compute_dtype]
        path_name = "nf4"
    else:
        dtype = base_dtype(recipe, device)
        if dtype == torch.bfloat16 and not bf16_supported(device):
            dtype = torch.float32
        path_name = f"{_SHORT[dtype]}-fallback" if recipe.quantization.mode == "nf4" else f"none-{_SHORT[dtype]}"

    attention, attention_reason = choose_attention(recipe.model.attention, device, dtype)
    kwargs: dict[str, Any] = dict(
        dtype=dtype, attn_implementation=attention, trust_remote_code=recipe.model.trust_remote_code
    )
    if use_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=recipe.quantization.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    model = _loading(resolved, lambda: AutoModelForCausalLM.from_pretrained(resolved, **kwargs))
    if not use_4bit:
        model.to(device)
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing

    # "auto" is decided after loading, from the memory left (pipeline/memory_plan.py; train.py enables it then).
    gc = recipe.model.gradient_checkpointing is True
    from pipeline.kernels import apply_kernels

    kernels, kernels_reason = apply_kernels(model, recipe.model.kernels, device)
    # No peft.prepare_model_for_kbit_training on the 4-bit path: it casts every non-4-bit weight (norms, embeddings,
    # lm_head) to fp32, and fp32 norm weights turn the whole residual stream fp32 (a bf16 activation times an fp32
    # weight is fp32; autocast does not cover elementwise ops). Measured on an H200 with a LLaMA-2-7B shape, batch
    # 8 x 1024 (docs/pipeline.md): peak 30.7 GiB with it, more than bf16 LoRA's 26.2 GiB. The base is frozen by
    # get_peft_model below; checkpointing and input gradients are all we need from it.
    if gc:
        enable_checkpointing(model)

    lora = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=list(recipe.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise UnsupportedError(f"lora.target_modules {recipe.lora.target_modules}: {exc}") from exc
    # A model left in eval mode silently skips gradient checkpointing (and dropout): train.py keeps it in train().
    model.train()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    info = ModelInfo(
        name_or_path=recipe.model.name_or_path,
        resolved_path=resolved,
        random_weights=is_random(resolved),
        device=str(device),
        base_dtype="nf4" if use_4bit else _SHORT[dtype],
        quantization_path=path_name,
        quantization_reason=quant_reason,
        attention=attention,
        attention_reason=attention_reason,
        gradient_checkpointing=_checkpointing_active(model.get_base_model()),
        total_params=total,
        trainable_params=trainable,
        lora_modules=sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in lora_parameters(model)}),
        kernels=kernels,
        kernels_reason=kernels_reason,
    )
    return model, tokenizer, info


def enable_checkpointing(model: Any) -> bool:
    """Turn on activation checkpointing (non-reentrant) on a base or peft model; True when it is active."""
    # use_reentrant=False: the reentrant variant needs inputs that require grad and silently drops gradients of
    # frozen-input segments; the non-reentrant one is torch's recommended default and works with DDP.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    return _checkpointing_active(base)


def _numel(p: torch.Tensor) -> int:
    # bitsandbytes packs two 4-bit weights per uint8 element; count the weights, not the bytes.
    n = p.numel()
    if p.dtype == torch.uint8 and hasattr(p, "quant_state"):
        return n * 2
    return n


def lora_parameters(model: Any) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def adapters_without_gradient(model: Any, loss_fn, batch: dict[str, torch.Tensor]) -> list[str]:
    """Names of LoRA matrices that get no (or a non-finite) gradient from one forward/backward on ``batch``.

    Why a separate probe rather than looking at the first real step: LoRA's B matrices start at zero, so at the
    first backward the A matrices' gradient is exactly zero however healthy the path is (dL/dA = B^T (...) = 0),
    and with a warm-up schedule the first optimizer step has lr 0, so B may still be zero at step two. The probe
    sets every B to small random values, runs one forward/backward, records which A and B matrices got a non-zero
    gradient, then restores every B (to its zeros) and clears the gradients: training starts from exactly the
    state it would have had, and the RNG state is forked so dropout masks of the real run are unchanged.
    """
    params = dict(lora_parameters(model))
    if not params:
        return ["<no LoRA parameters: check lora.target_modules>"]
    saved = {n: p.detach().clone() for n, p in params.items() if "lora_B" in n}
    devices = [p.device for p in params.values() if p.device.type == "cuda"][:1]
    try:
        with torch.random.fork_rng(devices=devices):
            gen = torch.Generator(device="cpu").manual_seed(0)
            with torch.no_grad():
                for n in saved:
                    p = params[n]
                    p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.device, p.dtype))
            for p in params.values():
                p.grad = None
            loss = loss_fn(model, batch)
            loss.backward()
        missing = []
        for n, p in params.items():
            g = p.grad
            if g is None or not torch.isfinite(g).all() or not bool((g != 0).any()):
                missing.append(n)
        return missing
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)
        for p in model.parameters():
            p.grad = None


def load_for_eval(model_path: str, adapter: Optional[str] = None, *, device: Optional[torch.device] = None):
    """(model in eval mode, tokenizer): the base model, with a trained LoRA adapter merged in when given."""
    from transformers import AutoModelForCausalLM

    device = device or choose_device("auto")
    resolved = resolve_model(model_path)
    tokenizer = _loading(resolved, lambda: load_tokenizer(resolved))
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = _loading(resolved, lambda: AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype,
                                                                            attn_implementation="sdpa"))
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"adapter folder {adapter} has no adapter_config.json: expected a peft LoRA adapter"
            )
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(device)
    model.eval()
    return model, tokenizer
