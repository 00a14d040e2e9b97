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

Checkpoints (``train.checkpoint_every``) hold *full* state, gathered to rank 0 on the CPU: the adapter in peft's
format (as the final save) and the optimizer state keyed by parameter names (``FSDP.optim_state_dict``, full
state dict, ``rank0_only``). Full rather than sharded: what QLoRA trains is small (the adapter; the 4-bit base is
frozen and reloaded from the model), so one file on rank 0 is cheap and the checkpoint reads like a DDP one. At
LLaMA-2-70B with LoRA r 64 on 7 modules (828 M fp32 adapter values) that is 3.3 GB of adapter + 6.6 GB of AdamW
moments in rank 0's host memory while it writes (~10 GB on disk per checkpoint); the GPUs hold no more than
during training (gathered unit by unit, offloaded to the CPU). A resume must use the same number of ranks: the
format itself does not depend on it, but only same-size resumes were tested, so another size is refused naming
both.

On the CPU (tests), FSDP runs over gloo with ``device_id=cpu`` on torch >= 2.4; torch 2.3 is refused there
(``check_recipe``).

Each rank loads the whole 4-bit model onto its own GPU before sharding (about 35 GB for 70B: fits an 80 GB H100
or a 64 GB MI250 GCD, not smaller GPUs); Answer.AI's rank-0-only loading, which avoids that, is not done here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import Recipe, RecipeError
from pipeline.core.errors import ResumeError, UnsupportedError
from pipeline.train import checkpoint as ckpt
from pipeline.train.distributed import rank_rng_states, reseed_new_rank

_WRAPPED = "_fsdp_wrapped_module."


def check_recipe(recipe: Recipe, device: torch.device, torch_version: str = torch.__version__) -> None:
    """What FSDP here cannot do, refused before minutes of loading, naming the key."""
    found = re.match(r"(\d+)\.(\d+)", torch_version)
    if device.type == "cpu" and found and (int(found[1]), int(found[2])) < (2, 4):
        # Seen on torch 2.3.1: it trains, but after a step the gathered state is freed storage (a full state dict
        # fails "storage of size 0", the LoRA units gather nothing), so no adapter or checkpoint could be written.
        raise UnsupportedError(
            f"distributed.strategy is 'fsdp' on the CPU, which needs torch >= 2.4 (this is {torch_version}); "
            "use distributed.strategy=ddp on the CPU, or a GPU"
        )
    if device.type not in ("cuda", "cpu"):
        raise UnsupportedError(
            f"distributed.strategy is 'fsdp' but the device is {device.type}: FSDP here runs on GPUs (CUDA or "
            "ROCm) or, for tests, the CPU (gloo); use distributed.strategy=ddp"
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


def _is_lora_unit(unit: Any) -> bool:
    """An FSDP unit around one trainable (LoRA) leaf. Checked on the unit's flat parameter: once wrapped (flat
    parameters), the leaf's ``weight`` is no longer an ``nn.Parameter``, so ``_is_trainable_leaf`` no longer
    recognizes it (the gathered adapter was empty until this check)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return (isinstance(unit, FSDP) and not list(unit.module.children())
            and any(p.requires_grad for p in unit.parameters()))


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
        # The CPU by name: without a device_id, FSDP looks for an accelerator and refuses the CPU ("FSDP needs a
        # non-CPU accelerator device"); given torch.device("cpu") it shards and trains over gloo (torch 2.3 and 2.13).
        device_id=device,
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
        if not _is_lora_unit(unit):
            continue
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            for pname, tensor in _unit_tensors(unit):
                out[f"{name}.{pname}".replace(_WRAPPED, "")] = tensor.detach().to("cpu", copy=True)
    return out


def _unit_tensors(unit: Any) -> list[tuple[str, torch.Tensor]]:
    """Inside ``summon_full_params``: the LoRA leaf's whole tensors (views of the unsharded flat parameter)."""
    return [(name, param) for name, param in unit.module.named_parameters() if "_flat_param" not in name]


SHARDING = "full"  # the state-dict kind FSDP checkpoints hold (module docstring: why, and its memory cost)


def _full_state_dict_type(module: Any) -> Any:
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
                                FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=True))


def checkpoint_if_due(trainer: Any, state: Any, output_dir: Path, run_info: dict[str, Any]) -> None:
    """Every ``train.checkpoint_every`` steps: adapter and optimizer state gathered (all ranks), rank 0 writes."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    every = trainer.recipe.train.checkpoint_every
    if not every or state.step % every:
        return
    dist = trainer.dist
    rng_states = rank_rng_states(dist)
    adapter = gather_adapter(trainer.model)
    with _full_state_dict_type(trainer.module):
        optimizer_state = FSDP.optim_state_dict(trainer.module, trainer.optimizer)
    if dist.main:
        ckpt.save_checkpoint(output_dir, state.step, model=trainer.model, optimizer=trainer.optimizer,
                             scheduler=trainer.scheduler, batcher_state=trainer.batcher.state_dict(),
                             history=state.history, keep=trainer.recipe.train.keep_checkpoints, run=run_info,
                             rng_states=rng_states, adapter_state=adapter, optimizer_state=optimizer_state,
                             sharding={"strategy": "fsdp", "state_dict": SHARDING, "world_size": dist.world_size})


def check_resume(path: Path, world_size: int, use_fsdp: bool = True) -> None:
    """Refuse a checkpoint this run cannot continue (FSDP's on another number of ranks or without FSDP, or one
    written without FSDP under FSDP), naming both sides, before anything is loaded."""
    facts = json.loads((Path(path) / "state.json").read_text())
    sharding = facts.get("sharding")
    if not use_fsdp:
        if sharding and sharding.get("strategy") == "fsdp":
            raise ResumeError(f"--resume from {path}: the checkpoint was written by {sharding['world_size']} FSDP "
                              "ranks (distributed.strategy=fsdp), this run does not use FSDP (one process, or "
                              f"strategy ddp); resume it under torchrun with {sharding['world_size']} ranks and "
                              "distributed.strategy=fsdp")
        return
    if not sharding or sharding.get("strategy") != "fsdp":
        raise ResumeError(f"--resume from {path}: the checkpoint was written without FSDP (distributed.strategy "
                          "ddp or one process), this run uses distributed.strategy=fsdp; resume it with the "
                          "strategy that wrote it")
    if int(sharding["world_size"]) != world_size:
        raise ResumeError(f"--resume from {path}: the checkpoint was written by {sharding['world_size']} FSDP "
                          f"ranks, this run has {world_size}; resume on {sharding['world_size']} ranks (torchrun "
                          "--nnodes x --nproc-per-node): FSDP resumes on another number of ranks are not supported")


def _load_adapter(peft_model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Write the saved adapter into the sharded LoRA units (gathered one at a time, written back to the shards)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    missing = []
    for name, unit in peft_model.named_modules():
        if not _is_lora_unit(unit):
            continue
        with FSDP.summon_full_params(unit, recurse=False, writeback=True), torch.no_grad():
            for pname, param in _unit_tensors(unit):
                # peft's files drop the adapter's name: "...lora_A.default.weight" is stored as "...lora_A.weight".
                key = re.sub(r"\.default\.", ".", f"{name}.{pname}".replace(_WRAPPED, ""))
                if key not in weights:
                    missing.append(key)
                    continue
                param.copy_(weights[key].to(param.device, param.dtype))
    if missing:
        raise ResumeError(f"the checkpoint's adapter lacks {len(missing)} LoRA tensors of this model "
                          f"({missing[:3]}); expected the same lora settings")


def load_checkpoint(path: Path, trainer: Any) -> dict[str, Any]:
    """Adapter, optimizer (full state, loaded on rank 0 and scattered), schedule and this rank's RNG; collective."""
    from safetensors.torch import load_file
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    path, dist = Path(path), trainer.dist
    check_resume(path, dist.world_size)
    # weights_only: tensors and plain containers only. Only rank 0 reads the full optimizer state (its own file);
    # the others pass an empty dict: with rank0_only, torch gives each rank its shard of rank 0's state.
    # The optimizer first: it initializes FSDP from the root unit; gathering a LoRA unit before that would make
    # that unit a root of its own, and FSDP then refuses the real root ("_is_root should not have been set").
    training = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    full = torch.load(path / ckpt.FULL_OPTIMIZER_FILE, map_location="cpu", weights_only=True) if dist.main else {}
    with _full_state_dict_type(trainer.module):
        to_load = FSDP.optim_state_dict_to_load(trainer.module, trainer.optimizer, full)
    trainer.optimizer.load_state_dict(to_load)
    _load_adapter(trainer.model, load_file(str(path / "adapter" / "adapter_model.safetensors")))
    trainer.scheduler.load_state_dict(training["scheduler"])
    state = json.loads((path / "state.json").read_text())
    per_rank = training["rng_per_rank"]
    state["rng_restored"] = dist.rank < len(per_rank)
    if state["rng_restored"]:
        ckpt.set_rng_state(per_rank[dist.rank])
    else:
        reseed_new_rank(trainer.recipe.train.seed, int(state["step"]), dist)
    return state
