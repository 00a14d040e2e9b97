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
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from pipeline.core.compat import auto_tokenizer, checkpointing_active, checkpointing_enable
from pipeline.core.config import Recipe
from pipeline.core.errors import AdapterGradientError, ModelNotFoundError, UnsupportedError
from pipeline.model import smollm2
from pipeline.model.precision import DTYPES, SHORT_NAMES, base_dtype, bf16_supported, gpu_has_bf16

# The synthetic models live in tiny.py; their names stay importable from here for older call sites.
from pipeline.model.tiny import (  # noqa: F401
    RANDOM_MARKER,
    RANDOM_PREFIX,
    RANDOM_PRESETS,
    build_random_model,
    is_random,
    parse_random_spec,
)

__all__ = ["AdapterGradientError", "UnsupportedError", "ModelInfo", "resolve_model", "load_tokenizer",
           "choose_device", "choose_attention", "four_bit_support", "load_for_training", "lora_parameters",
           "adapters_without_gradient", "load_for_eval", "base_dtype", "bf16_supported", "is_random",
           "parse_random_spec", "build_random_model", "RANDOM_PREFIX"]


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
    kernels: str = "none"  # "liger" | "none" (pipeline/model/kernels.py)
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
            raise ModelNotFoundError(f"model folder {path} has no config.json: expected a Hugging Face checkpoint")
        return str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model folder {name_or_path} does not exist")
    return name_or_path


def _loading(name: str, load: Any) -> Any:
    """Run a from_pretrained call; a hub id on an offline host becomes a short, actionable message."""
    try:
        return load()
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"cannot load model {name!r}: {first[:300].rstrip('.')}. Expected a local checkpoint folder, "
            "'smollm2-135m-instruct', or a hub id on a host that can reach the hub (HF_HUB_OFFLINE unset)"
        ) from exc


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with a pad token (EOS when the model has none: labels mask padding anyway).

    Loaded through ``compat.auto_tokenizer`` (transformers 4.57 cannot read a tokenizer saved by 5.x otherwise).
    """
    tokenizer = auto_tokenizer(path, trust_remote_code)
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
            reason = why_not if not fa_ok else f"device {device.type} / dtype {SHORT_NAMES.get(dtype, dtype)}"
            raise UnsupportedError(
                f"model.attention is 'flash_attention_2' but it cannot run here: {reason}; "
                "FlashAttention 2 needs the flash_attn package, a GPU and a bf16/fp16 model. Use attention: auto"
            )
        return "flash_attention_2", "model.attention is 'flash_attention_2'"
    if usable:
        return "flash_attention_2", "auto: flash_attn imports, GPU, 16-bit compute"
    if not fa_ok:
        return "sdpa", f"auto: {why_not}"
    return "sdpa", (f"auto: FlashAttention 2 needs a GPU and 16-bit compute "
                     f"(device {device.type}, {SHORT_NAMES.get(dtype)})")


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


@dataclass
class Quantization:
    """Which base the adapters train on: NF4 4-bit or an unquantized fallback, with the reason for the choice."""

    use_4bit: bool
    dtype: torch.dtype  # the compute dtype on the 4-bit path, the weights' dtype otherwise
    path_name: str  # ModelInfo.quantization_path
    reason: str


def choose_quantization(recipe: Recipe, device: torch.device, force_fallback: Optional[str] = None) -> Quantization:
    """NF4 where 4-bit can train here; else refuse or fall back, as ``quantization.on_unsupported`` says."""
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
        return Quantization(True, DTYPES[recipe.quantization.compute_dtype], "nf4", quant_reason)
    dtype = base_dtype(recipe, device)
    if dtype == torch.bfloat16 and not bf16_supported(device):
        dtype = torch.float32
    path_name = f"{SHORT_NAMES[dtype]}-fallback" if recipe.quantization.mode == "nf4" else f"none-{SHORT_NAMES[dtype]}"
    return Quantization(False, dtype, path_name, quant_reason)


def from_pretrained_kwargs(recipe: Recipe, device: torch.device, quant: Quantization, attention: str) -> dict:
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` (with the 4-bit config on the NF4 path)."""
    kwargs: dict[str, Any] = dict(
        dtype=quant.dtype, attn_implementation=attention, trust_remote_code=recipe.model.trust_remote_code
    )
    if quant.use_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=recipe.quantization.double_quant,
            bnb_4bit_compute_dtype=quant.dtype,
            # FSDP shards only floating-point tensors: store the packed 4-bit bytes as the compute dtype there.
            bnb_4bit_quant_storage=quant.dtype if recipe.distributed.strategy == "fsdp" else torch.uint8,
        )
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    return kwargs


def enable_checkpointing(model: Any) -> bool:
    """Activation checkpointing (non-reentrant) on a base or peft model, with input gradients so LoRA inside
    checkpointed layers learns; True when it is active. ``model.gradient_checkpointing: auto`` is decided after
    loading, from the memory left (pipeline/train/memory_plan.py), so train.py may call this on the peft model."""
    # No peft.prepare_model_for_kbit_training on the 4-bit path: it casts every non-4-bit weight (norms, embeddings,
    # lm_head) to fp32, and fp32 norm weights turn the whole residual stream fp32 (a bf16 activation times an fp32
    # weight is fp32; autocast does not cover elementwise ops). Measured on an H200 with a LLaMA-2-7B shape, batch
    # 8 x 1024 (docs/pipeline.md): peak 30.7 GiB with it, more than bf16 LoRA's 26.2 GiB. The base is frozen by
    # get_peft_model; checkpointing and input gradients are all we need from it.
    # use_reentrant=False: the reentrant variant needs inputs that require grad and silently drops gradients of
    # frozen-input segments; the non-reentrant one is torch's recommended default and works with DDP.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpointing_enable(base, {"use_reentrant": False})
    base.enable_input_require_grads()
    return checkpointing_active(base)


def apply_lora(model: Any, recipe: Recipe) -> Any:
    """The peft model with the recipe's LoRA adapters (the base frozen), in train mode."""
    from peft import LoraConfig, get_peft_model

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
    return model


def describe(model: Any, recipe: Recipe, resolved: str, device: torch.device, quant: Quantization,
             attention: tuple[str, str], kernels: tuple[str, str] = ("none", "")) -> ModelInfo:
    """What really loaded, for the log line and the report."""
    return ModelInfo(
        name_or_path=recipe.model.name_or_path,
        resolved_path=resolved,
        random_weights=is_random(resolved),
        device=str(device),
        base_dtype="nf4" if quant.use_4bit else SHORT_NAMES[quant.dtype],
        quantization_path=quant.path_name,
        quantization_reason=quant.reason,
        attention=attention[0],
        attention_reason=attention[1],
        gradient_checkpointing=checkpointing_active(model.get_base_model()),
        total_params=sum(_numel(p) for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        lora_modules=sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in lora_parameters(model)}),
        kernels=kernels[0],
        kernels_reason=kernels[1],
    )


def load_for_training(
    recipe: Recipe, device: torch.device, *, force_fallback: Optional[str] = None
) -> tuple[Any, Any, ModelInfo]:
    """(peft model in train mode on ``device``, tokenizer, ModelInfo).

    ``force_fallback`` (a reason) skips 4-bit: train.py passes it when the adapter-gradient guard found adapters
    without gradient on the 4-bit path and the recipe allows falling back.
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(recipe.model.name_or_path)
    tokenizer = _loading(resolved, lambda: load_tokenizer(resolved, recipe.model.trust_remote_code))
    quant = choose_quantization(recipe, device, force_fallback)
    attention = choose_attention(recipe.model.attention, device, quant.dtype)
    kwargs = from_pretrained_kwargs(recipe, device, quant, attention[0])
    model = _loading(resolved, lambda: AutoModelForCausalLM.from_pretrained(resolved, **kwargs))
    if not quant.use_4bit:
        model.to(device)
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    from pipeline.model.kernels import apply_kernels

    kernels = apply_kernels(model, recipe.model.kernels, device)  # fused Triton kernels, before LoRA wraps layers
    if recipe.model.gradient_checkpointing is True:  # "auto": decided later from the memory left (memory_plan)
        enable_checkpointing(model)
    model = apply_lora(model, recipe)
    return model, tokenizer, describe(model, recipe, resolved, device, quant, attention, kernels)


def _numel(p: torch.Tensor) -> int:
    # bitsandbytes packs two 4-bit weights per uint8 element; count the weights, not the bytes.
    n = p.numel()
    if hasattr(p, "quant_state"):  # stored as uint8, or as bf16 for FSDP (bnb_4bit_quant_storage): 4 per element
        return n * 2 * p.element_size()
    return n


def lora_parameters(model: Any) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]


def adapters_without_gradient(model: Any, loss_fn: Callable[[Any, dict], torch.Tensor],
                              batch: dict[str, torch.Tensor]) -> list[str]:
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


def load_for_eval(
    model_path: str,
    adapter: Optional[str] = None,
    *,
    device: Optional[torch.device] = None,
    merge: bool = False,
    record: Optional[dict[str, Any]] = None,
):
    """(model in eval mode, tokenizer, how it was loaded) for ``python -m pipeline evaluate``.

    With an adapter and ``merge=False`` (issue 10): the base is loaded the way the adapter was trained, as
    ``record`` (pipeline.core.run_record) says: NF4 with its compute dtype and double quantization, or the unquantized
    dtype of a fallback run, and the adapter stays unmerged, which is the model finetune scored at the end of
    training. ``merge=True``, or no adapter: the base in bf16 on GPUs that have it, fp32 elsewhere, with the
    adapter merged in.
    """
    from transformers import AutoModelForCausalLM

    device = device or choose_device("auto")
    resolved = resolve_model(model_path)
    as_trained = bool(adapter) and not merge
    if as_trained and record is None:
        raise ValueError("load_for_eval: an adapter without merge needs its run record, expected record=...")
    trust = bool(record.get("trust_remote_code")) if as_trained else False
    tokenizer = _loading(resolved, lambda: load_tokenizer(resolved, trust))
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"adapter folder {adapter} has no adapter_config.json: expected a peft LoRA adapter")
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa", "trust_remote_code": trust}
    if as_trained:
        kwargs.update(_as_trained_kwargs(record, device))
        how = {"mode": "as-trained", "quantization_path": record["quantization_path"],
               "compute_dtype": record["compute_dtype"], "attention": kwargs["attn_implementation"]}
    else:
        kwargs["dtype"] = torch.bfloat16 if gpu_has_bf16(device) else torch.float32
        how = {"mode": "merged" if adapter else "base", "quantization_path": f"none-{SHORT_NAMES[kwargs['dtype']]}",
               "compute_dtype": str(kwargs["dtype"]).replace("torch.", ""), "attention": "sdpa"}
        kwargs.update(_direct_to_gpu(device))
    model = _loading(resolved, lambda: AutoModelForCausalLM.from_pretrained(resolved, **kwargs))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if not as_trained:
            model = model.merge_and_unload()
    if "quantization_config" not in kwargs:
        model.to(device)
    model.eval()
    return model, tokenizer, how


def _direct_to_gpu(device: torch.device) -> dict[str, Any]:
    """``device_map`` that makes from_pretrained write the weights straight into GPU memory.

    Without it a 7B bf16 base is materialized in host memory first (13.5 GB) and then copied to the GPU; with it
    the weight loading of ``python -m pipeline evaluate`` took 1.5-2 s on an H100 (docs/benchmarks.md; the old
    path was not timed separately). transformers 4.x needs accelerate for a device map; without it the old path
    (load, then ``.to(device)``) stays.
    """
    if device.type != "cuda":
        return {}
    import importlib.util

    import transformers

    if int(transformers.__version__.split(".")[0]) < 5 and importlib.util.find_spec("accelerate") is None:
        return {}
    return {"device_map": {"": device.index if device.index is not None else 0}}


def _as_trained_kwargs(record: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """from_pretrained kwargs that rebuild the base of a training run (see load_for_training for the same path)."""
    dtype = DTYPES.get(record["compute_dtype"]) or {"bf16": torch.bfloat16, "fp16": torch.float16,
                                                      "fp32": torch.float32}.get(record["compute_dtype"])
    if dtype is None:
        raise ValueError(f"run record: compute_dtype {record['compute_dtype']!r}, expected bf16, fp16 or fp32")
    attention = record.get("attention") or "sdpa"
    if attention == "flash_attention_2" and choose_attention("auto", device, dtype)[0] != "flash_attention_2":
        attention = "sdpa"  # same math, another kernel: FlashAttention cannot run here
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attention}
    if record["quantization_path"] == "nf4":
        from transformers import BitsAndBytesConfig

        if device.type != "cuda":
            raise UnsupportedError(
                "the adapter was trained on an NF4 4-bit base (its run record says so), which this pipeline loads "
                f"on GPUs only, and the device here is {device.type}. Evaluate on a GPU to reproduce the run's "
                "accuracy, or pass --merge to score it merged into a bf16/fp32 base (a different number)"
            )
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=bool(record.get("double_quant")),
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index if device.index is not None else 0}
    return kwargs
