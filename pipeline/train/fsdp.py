"""FSDP + QLoRA: the 4-bit base and the LoRA adapters sharded over the GPUs, for models larger than one GPU.

Chosen by ``distributed.strategy: fsdp`` (recipes/medqa-qlora-70b.yaml). The recipe is the one bitsandbytes,
PEFT ("FSDP + QLoRA" in the PEFT docs) and Answer.AI's fsdp_qlora describe:

* the 4-bit weights are *stored* in the compute dtype (``bnb_4bit_quant_storage=bfloat16``, set in
  ``model.from_pretrained_kwargs``): FSDP flattens and shards only floating-point tensors of one dtype, and
  bitsandbytes keeps the quantization state on the module, so the packed bytes can be sharded like any bf16 weight;
* one FSDP unit per decoder layer (the model's ``_no_split_modules``), plus one unit per trainable LoRA leaf
  (its fp32 weights cannot share a flat parameter with the frozen bf16 ones); the embeddings, final norm and head
  stay in the root unit;
* ``use_orig_params=False`` by default (``distributed.use_orig_params``), as PEFT's and Answer.AI's configurations:
  every LoRA leaf is its own unit, so its flat parameter's name still holds ``lora_`` and ``lora_parameters`` finds
  the trainable flat parameters the optimizer must hold.

Torch's ``FullyShardedDataParallel`` directly rather than accelerate's FSDP plugin: the kit has its own loop
(pipeline/finetune.py), and the plugin is a thin layer over the same constructor that would add accelerate's
launcher and state to a loop that does not use them. FSDP1 is the API present on both torch 2.3 (images) and
today's releases; FSDP2 (``fully_shard``) is not public on 2.3.

Each rank loads the whole 4-bit model onto its own GPU before sharding (about 35 GB for 70B: fits an 80 GB H100
or a 64 GB MI250 GCD, not smaller GPUs); Answer.AI's rank-0-only loading, which avoids that, is not done here.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from pipeline.core.config import Recipe, RecipeError
from pipeline.core.errors import UnsupportedError

_WRAPPED = "_fsdp_wrapped_module."


def check_recipe(recipe: Recipe, device: torch.device) -> None:
    """What FSDP here cannot do (yet), refused before minutes of loading, naming the key."""
    if device.type != "cuda":
        raise UnsupportedError(
            f"distributed.strategy is 'fsdp' but the device is {device.type}: torch's FSDP needs GPUs (CUDA or "
            "ROCm); use distributed.strategy=ddp on CPU"
        )
    if recipe.train.checkpoint_every:
        raise RecipeError(
            f"distributed.strategy is 'fsdp' but train.checkpoint_every is {recipe.train.checkpoint_every}: "
            "sharded checkpoints (and so --resume) are not implemented for FSDP yet; set train.checkpoint_every=0 "
            "(the adapter is still saved at the end)"
        )


def _decoder_layer_classes(model: Any) -> tuple[type, ...]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    classes = {type(m) for m in base.modules() if type(m).__name__ in names}
    if not classes:
        raise RecipeError(f"distributed.strategy fsdp: {type(base).__name__} names no decoder layer class "
                          "(_no_split_modules); expected a transformers decoder model such as LLaMA")
    return tuple(classes)


def _is_trainable_leaf(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return not list(module.children()) and isinstance(weight, torch.nn.Parameter) and weight.requires_grad


def wrap(module: torch.nn.Module, peft_model: Any, device: torch.device, *, cpu_offload: bool = False,
         use_orig_params: bool = False) -> Any:
    """``module`` (AnswerLoss around ``peft_model``) as an FSDP root with decoder-layer and LoRA-leaf units."""
    import functools

    from torch.distributed.fsdp import CPUOffload, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    layers = _decoder_layer_classes(peft_model)
    for param in peft_model.parameters():
        if param.requires_grad:  # fp32 master weights for the adapters, whatever dtype peft created them in
            param.data = param.data.float()
    policy = functools.partial(lambda_auto_wrap_policy,
                               lambda_fn=lambda m: isinstance(m, layers) or _is_trainable_leaf(m))
    return FSDP(
        module,
        auto_wrap_policy=policy,
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        cpu_offload=CPUOffload(offload_params=cpu_offload),
        device_id=device if device.type == "cuda" else None,
        use_orig_params=use_orig_params,
        limit_all_gathers=True,
    )


def is_fsdp(module: Any) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return isinstance(module, FSDP)


def clip_grad_norm(train_module: Any, max_norm: float) -> None:
    """The global gradient norm over all shards (a local ``clip_grad_norm_`` would see one rank's shard)."""
    train_module.clip_grad_norm_(max_norm)


def gather_adapter(peft_model: Any) -> dict[str, torch.Tensor]:
    """Every LoRA tensor, whole, on CPU, on every rank; collective (all ranks call it, in the same order).

    Only the LoRA units are gathered, one at a time: gathering the whole model's state dict would also
    materialize every 4-bit decoder layer.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    out: dict[str, torch.Tensor] = {}
    for name, unit in peft_model.named_modules():
        if not (isinstance(unit, FSDP) and _is_trainable_leaf(unit.module)):
            continue
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            for pname, param in unit.module.named_parameters():
                if "_flat_param" in pname:
                    continue
                out[f"{name}.{pname}".replace(_WRAPPED, "")] = param.detach().to("cpu", copy=True)
    return out


def save_adapter(peft_model: Any, dest: Any, main: bool, state_dict: Optional[dict] = None) -> None:
    """Gather the adapter (all ranks) and let rank 0 write it in peft's format, atomically."""
    from kit import atomic

    state_dict = state_dict if state_dict is not None else gather_adapter(peft_model)
    if main:
        with atomic.folder(dest) as tmp:
            peft_model.save_pretrained(tmp, state_dict=state_dict)
