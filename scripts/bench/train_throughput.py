#!/usr/bin/env python3
"""Training throughput: the Hugging Face QLoRA recipe (the peer) against our training step, same run, same data.

Both trainers see the same optimizer steps: each step is the same 32 MedQA questions (a seeded permutation of the
file), in the lm-eval prompt with the answer letter as target, tokenized by a byte-level BPE trained on those
questions (so lengths are real MedQA lengths, ~1.8 tokens per word). Same base (one NF4 load per process), same
LoRA init (seeded), same optimizer and learning rate, same loss normalization (mean over the step's answer
tokens). What differs is how each trainer runs the step:

- peer: ``prepare_model_for_kbit_training`` with gradient checkpointing, SDPA, the 32 questions in random
  micro-batches of 8 padded to the longest, gradient accumulation 4, full-sequence logits and the model's own
  loss (``labels`` masked to the answer, ``num_items_in_batch`` = the step's answer tokens);
- ours: ``pipeline.data.packing.plan_step`` + ``pipeline.train.step.accumulate`` (what ``python -m pipeline finetune``
  runs), with the seed recipe's settings, plus "levers" variants that add one change at a time.

    python scripts/bench/train_throughput.py --out bench.json                      # one GPU, 7B shape, NF4
    python scripts/bench/train_throughput.py --tiny --steps 3 --warmup 1           # CPU smoke (CI)

Prints, per trainer: effective (non-padding) tokens/s over the timed steps, median optimizer-step time, peak
memory, loss after the last step and over the last 5, model TFLOP/s (4N per token: forward and input-gradient
backward of the frozen base) against the GPU's measured bf16 matmul rate, and the ratio to the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from medqa_bpe import medqa_tokenizer  # noqa: E402  (scripts/bench/medqa_bpe.py, beside this script)

TINY = ("random:llama2-7b:num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=4,"
        "num_key_value_heads=4,vocab_size=3000")


# ----------------------------------------------------------------------------------------------------------------
# Data: real MedQA sequences, the same optimizer steps for every trainer


def step_plan(n: int, per_step: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` lists of ``per_step`` indices: consecutive slices of seeded permutations (epoch after epoch)."""
    rng, order, out = random.Random(seed), [], []
    for _ in range(steps):
        if len(order) < per_step:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        out.append(order[:per_step])
        order = order[per_step:]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Model: one base per process; adapters added and removed per trainer


def load_base(spec: str, device: torch.device, nf4: bool):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from pipeline.model.load import resolve_model

    path = resolve_model(spec)
    kwargs: dict[str, Any] = dict(attn_implementation="sdpa",
                                  dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    if nf4:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not nf4:
        model.to(device)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def base_params(model) -> int:
    from pipeline.model.load import _numel

    return sum(_numel(p) for n, p in model.named_parameters() if "lora_" not in n)


def add_lora(base, seed: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, cfg)
    model.train()
    return model


def make_optimizer(model, device: torch.device, lr: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        import bitsandbytes as bnb

        return params, bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=0.0)
    return params, torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def strip(model, base) -> None:
    """Remove the adapters and checkpointing so the next trainer starts from the same bare base."""
    model.unload()
    if getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    if hasattr(base, "disable_input_require_grads"):
        try:
            base.disable_input_require_grads()
        except AttributeError:  # no hook registered
            pass


# ----------------------------------------------------------------------------------------------------------------
# The two ways to run one optimizer step


def peer_step(model, examples: list, pad_id: int, device: torch.device, rng: random.Random, micro: int) -> torch.Tensor:
    from pipeline.data.batching import collate

    order = list(range(len(examples)))
    rng.shuffle(order)  # random micro-batches, as a random sampler gives
    answer_tokens = sum(sum(1 for x in e["labels"] if x != -100) for e in examples)
    total = torch.zeros((), device=device)
    for start in range(0, len(order), micro):
        batch = collate([examples[i] for i in order[start:start + micro]], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**batch, num_items_in_batch=answer_tokens).loss
        loss.backward()
        total += loss.detach()
    return total


def tuned_step(model, examples: list, device: torch.device, micro: int, answer_tokens: int) -> torch.Tensor:
    """The tuned peer's step: padding-free micro-batches of ``micro`` sequences (transformers'
    ``DataCollatorWithFlattening``: one row, position ids restarting per sequence, each sequence's first label -100),
    the model's own loss (liger's fused linear cross-entropy once patched) over the step's answer tokens."""
    from transformers import DataCollatorWithFlattening

    collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    total = torch.zeros((), device=device)
    for start in range(0, len(examples), micro):
        feats = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples[start:start + micro]]
        batch = collator(feats, return_tensors="pt")
        batch = {k: batch[k].to(device) for k in ("input_ids", "labels", "position_ids")}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**batch, num_items_in_batch=answer_tokens).loss
        loss.backward()
        total += loss.detach()
    return total


def legacy_step(module, examples: list, pad_id: int, device: torch.device, micro: int) -> torch.Tensor:
    """The pipeline before issue 13: length-sorted micro-batches of 8, a mean per micro-batch, .item() per micro."""
    from pipeline.data.batching import collate

    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    chunks = [order[s:s + micro] for s in range(0, len(order), micro)]
    total = 0.0
    for idx in chunks:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss_sum, count = module(**batch)
        loss = loss_sum / count.clamp(min=1)
        (loss / len(chunks)).backward()
        total += loss.item() / len(chunks)
        int(batch["attention_mask"].sum())  # the old loop's token count: a second sync per micro-step
    return torch.tensor(total)


def ours_step(module, examples: list, pad_id: int, device: torch.device, cut: dict) -> tuple:
    from pipeline.data.packing import plan_step
    from pipeline.train.step import accumulate

    step = plan_step(examples, pad_id, **cut)
    def auto():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    return accumulate(module, step, device, autocast=auto), step


# ----------------------------------------------------------------------------------------------------------------
# Timing one trainer


def varlen_check(module, model, base, ctx: dict, device: torch.device, previous: str) -> str:
    """The same packed sequences through varlen attention and through the SDPA block-diagonal mask (eval mode, no
    dropout): the answer loss must agree to bf16 rounding, else this transformers does not hand the boundaries to
    the attention function and varlen must not be used."""
    from pipeline.data.packing import plan_step
    from pipeline.model import varlen as vl

    few = ctx["examples"][:4]
    auto = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), auto:
            a = plan_step(few, ctx["pad"], token_budget=4096, packing=True, varlen=True).micro[0]
            got = float(module(**a.inputs(device)))
            vl.set_attention(base, previous)
            b = plan_step(few, ctx["pad"], token_budget=4096, packing=True).micro[0]
            want = float(module(**b.inputs(device)))
            vl.set_attention(base, vl.NAME)
    except Exception as exc:  # noqa: BLE001
        return f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        model.train(was)
    ok = abs(got - want) <= 0.02 * abs(want) + 0.05
    return f"{'ok' if ok else 'FAILED'}: answer loss {got:.4f} (varlen) vs {want:.4f} (SDPA mask)"


def warm_up_shapes(module, params, steps: list, ctx: dict, device: torch.device, cut: dict) -> int:
    """pipeline.train.step.warm_up over the shapes this run will meet (planned from its steps on the host)."""
    from pipeline.data.packing import plan_step
    from pipeline.train.step import warm_up

    planned = [plan_step([ctx["examples"][j] for j in idx], ctx["pad"], **cut) for idx in steps]
    return warm_up(module, planned, device, params, autocast=lambda: torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_trainer(name: str, run_step: Callable[[list], torch.Tensor], params, optimizer, steps: list, examples: list,
                device: torch.device, warmup: int, profile_dir: Optional[Path],
                before: Optional[Callable[[], Any]] = None) -> dict:
    """Warm-up steps, then timed steps; losses of every step; optional profile of the first timed step.

    ``before`` (a shape warm-up) runs first and its time is added to the first timed step's, so the loop average
    includes it. With ``warmup`` 0 every step is timed: the whole loop, first steps included (cold start).
    """
    losses, times, tokens = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pre_s, shapes = 0.0, None
    if before is not None:
        sync(device)
        t0 = time.perf_counter()
        shapes = before()
        sync(device)
        pre_s = time.perf_counter() - t0
        print(f"{name}: warm-up over {shapes} shapes took {pre_s:.1f} s", flush=True)
    for i, idx in enumerate(steps):
        chosen = [examples[j] for j in idx]
        prof = _profiler(device) if (profile_dir is not None and i == warmup) else None
        sync(device)
        t0 = time.perf_counter()
        with (prof if prof is not None else _null()):
            loss = run_step(chosen)
            torch.nn.utils.clip_grad_norm_(params, 0.3)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
            sync(device)
        dt = time.perf_counter() - t0
        if prof is not None:
            _write_profile(prof, profile_dir / f"profile-{name}.txt", dt)
        elif i >= warmup:
            times.append(dt + (pre_s if not times else 0.0))
            tokens.append(sum(len(e["input_ids"]) for e in chosen))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"trainer": name, "tokens_per_s": sum(tokens) / sum(times) if times else None,
            "median_step_s": statistics.median(times) if times else None, "timed_steps": len(times),
            "step_times_s": [round(t, 4) for t in times], "peak_gib": peak, "losses": losses,
            "final_loss": losses[-1], "mean_last5": sum(losses[-5:]) / len(losses[-5:]),
            "warm_up_s": round(pre_s, 2), "warm_up_shapes": shapes,
            "first5_tokens_per_s": sum(tokens[:5]) / sum(times[:5]) if times else None}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _profiler(device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=acts, record_shapes=False)


def _write_profile(prof, path: Path, wall: float) -> None:
    """Top operators by device time, kernel busy time against wall time, and the host syncs counted."""
    events = prof.key_averages()
    attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    from torch.autograd import DeviceType

    # Kernel records only (device_type CUDA): operator rows repeat their kernels' time.
    busy_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))
                  for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CUDA)
    counts = {name: sum(e.count for e in events if e.key == name)
              for name in ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
                           "cudaDeviceSynchronize", "aten::to", "aten::_to_copy", "aten::copy_")}
    sort = "self_device_time_total" if attr == "self_device_time_total" else "self_cuda_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=30)
    except (AttributeError, KeyError):
        table = events.table(sort_by="self_cpu_time_total", row_limit=30)
    summary = (f"wall {wall * 1e3:.1f} ms, device busy (sum of kernel time) {busy_us / 1e3:.1f} ms "
               f"({100 * busy_us / 1e6 / wall:.0f}% of wall)\ncalls: {json.dumps(counts)}\n")
    path.write_text(summary + table, encoding="utf-8")
    print(f"profile -> {path}: {summary.strip()}", flush=True)


def matmul_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    sync(device)
    return 2 * 8192**3 * n / (time.perf_counter() - t0) / 1e12


# ----------------------------------------------------------------------------------------------------------------
# The trainers of one run


def run_peer(base, args, ctx: dict) -> dict:
    from peft import prepare_model_for_kbit_training

    dtypes = {n: p.dtype for n, p in base.named_parameters()}
    prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)  # as the HF QLoRA docs write it
    model = add_lora(base, args.seed)
    params, opt = make_optimizer(model, ctx["device"], args.lr)
    rng = random.Random(args.seed)
    res = run_trainer("peer", lambda ch: peer_step(model, ch, ctx["pad"], ctx["device"], rng, args.micro), params,
                      opt, ctx["steps"][:args.steps], ctx["examples"], ctx["device"], args.warmup, ctx["profile"])
    strip(model, base)
    with torch.no_grad():  # prepare_model_for_kbit_training cast norms/embeddings/head to fp32: undo for ours
        for n, p in base.named_parameters():
            if p.dtype != dtypes[n]:
                p.data = p.data.to(dtypes[n])
    return res


def tuned_micro(model, params, steps: list, examples: list, device: torch.device, per_step: int) -> int:
    """As many sequences per micro-step as fit: the largest of per_step, per_step/2, ... whose heaviest micro-batch
    in this run survives one forward/backward (what a user finds by trying). Untimed; gradients dropped."""
    if device.type != "cuda":
        return per_step
    micro = per_step
    while micro > 1:
        chunks = [[examples[j] for j in idx[s:s + micro]] for idx in steps for s in range(0, len(idx), micro)]
        heaviest = max(chunks, key=lambda c: sum(len(e["input_ids"]) for e in c))
        try:
            tuned_step(model, heaviest, device, micro, answer_tokens=1)
            return micro
        except torch.cuda.OutOfMemoryError:
            print(f"tuned peer: {micro} sequences per micro-step do not fit", flush=True)
            micro //= 2
        finally:
            for p in params:
                p.grad = None
            torch.cuda.empty_cache()
    return 1


def run_tuned(base, args, ctx: dict) -> dict:
    """HF + PEFT + liger (RoPE, RMSNorm, SwiGLU, fused linear cross-entropy), no checkpointing, padding-free
    packing, as many sequences per micro-step as fit, gradient accumulation for the rest."""
    device = ctx["device"]
    kernels = "none (CPU smoke run: liger needs a GPU)"
    if device.type == "cuda":  # on a GPU the tuned peer is nothing without its kernels: a missing liger fails it
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        # The documented instance patch; with fused_linear_cross_entropy liger replaces the causal LM's forward, so
        # the model's own loss (labels, num_items_in_batch) never builds the full logits. Patches the base for
        # good: the run order puts the standard recipe before this.
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=True, model=base)
        ctx["kernels"] = ("liger", "tuned peer")
        kernels = "liger RoPE, RMSNorm, SwiGLU, fused linear cross-entropy"
    model = add_lora(base, args.seed)
    params, opt = make_optimizer(model, device, args.lr)
    steps = ctx["steps"][:args.steps]
    micro = tuned_micro(model, params, steps, ctx["examples"], device, args.per_step)

    def one(chosen: list) -> torch.Tensor:
        answer = sum(sum(1 for x in e["labels"][1:] if x != -100) for e in chosen)
        return tuned_step(model, chosen, device, micro, answer)

    res = run_trainer("tuned", one, params, opt, steps, ctx["examples"], device, args.warmup,
                      ctx["profile"] if "tuned" in PROFILED else None)
    res["micro_sequences"], res["kernels"] = micro, kernels
    ctx["tuned_peak_gib"] = res["peak_gib"]
    strip(model, base)
    return res


def run_ours(base, args, ctx: dict, name: str, *, legacy: bool = False, checkpointing: Any = "auto",
             budget: Any = "auto", packing: bool = False, kernels: Any = "none", cap_gb: Optional[float] = None,
             steps: int = 0, varlen: Any = False, balance: bool = False, round_to: int = 1,
             warmup_shapes: bool = False, optimizer: Optional[str] = None) -> dict:
    from pipeline.model.kernels import apply_kernels
    from pipeline.model.load import enable_checkpointing
    from pipeline.train import memory_plan
    from pipeline.train.loss import AnswerLoss
    from pipeline.train.step import AnswerPositionLoss

    device = ctx["device"]
    if isinstance(kernels, tuple):  # the kernels study: liger's parts one at a time (cumulative)
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope="rope" in kernels, rms_norm="rms_norm" in kernels, swiglu="swiglu" in kernels,
                                    cross_entropy=False, fused_linear_cross_entropy=False, model=base)
        ctx["kernels"] = ("liger", f"parts {kernels}")
        fused = "swiglu" in kernels
    else:
        if kernels != "none" and ctx.get("kernels", ("none",))[0] == "none":
            ctx["kernels"] = apply_kernels(base, kernels, device)  # patches the base for good (see the run order)
        fused = kernels != "none" and ctx.get("kernels", ("none",))[0] == "liger"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cap = memory_plan.apply_budget(device, cap_gb)
    plan = memory_plan.plan_memory(base.config, free=memory_plan.free_bytes(device, cap), longest=ctx["longest"],
                                   checkpointing=checkpointing, token_budget=budget, fused_swiglu=fused)
    from pipeline.data.packing import packing_unsupported

    if packing and packing_unsupported("sdpa"):
        print(f"{name}: no packing: {packing_unsupported('sdpa')}", flush=True)
        packing = False
    from pipeline.model import varlen as vl

    use_varlen = packing and varlen is not False and (vl.varlen_unavailable(device) is None or device.type == "cpu")
    if varlen is True and not use_varlen:
        raise RuntimeError(f"{name}: varlen attention cannot run here: {vl.varlen_unavailable(device)}")
    previous_attention = vl.use_varlen(base) if use_varlen else None
    model = add_lora(base, args.seed)
    if plan.gradient_checkpointing:
        enable_checkpointing(model)
    params, opt = make_optimizer(model, device, args.lr)
    if optimizer:  # train.optimizer of the recipe, built by the code finetune runs (pipeline/train/optim.py)
        from pipeline.core.config import load_recipe
        from pipeline.train.optim import build_optimizer

        opt = build_optimizer(load_recipe(Path(args.recipe), [f"train.optimizer={optimizer}", f"train.lr={args.lr}"]),
                              params, device)
    module = AnswerLoss(model) if legacy else AnswerPositionLoss(model)
    varlen_note = None
    if use_varlen:
        varlen_note = varlen_check(module, model, base, ctx, device, previous_attention)
        if varlen_note.startswith("FAILED"):  # this stack passes the boundaries differently: rows instead
            print(f"{name}: {varlen_note}; falling back to packed rows", flush=True)
            vl.set_attention(base, previous_attention)
            use_varlen, previous_attention = False, None
    seen = {"max_micro_tokens": 0, "shapes": set()}
    launches0 = vl.launches
    cut = dict(token_budget=plan.token_budget, packing=packing, balance=balance, round_to=round_to, varlen=use_varlen)

    def one(chosen: list) -> torch.Tensor:
        if legacy:
            return legacy_step(module, chosen, ctx["pad"], device, args.micro)
        loss, step = ours_step(module, chosen, ctx["pad"], device, cut)
        seen["max_micro_tokens"] = max([seen["max_micro_tokens"]] + [int(m.input_ids.numel()) for m in step.micro])
        seen["shapes"].update(tuple(m.input_ids.shape) for m in step.micro)
        return loss

    fixed = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    run_steps = ctx["steps"][:steps or args.steps]
    pre = None
    if warmup_shapes and not legacy:  # timed as part of the loop: its cost belongs to the run
        pre = lambda: warm_up_shapes(module, params, run_steps, ctx, device, cut)  # noqa: E731
    try:
        res = run_trainer(name, one, params, opt, run_steps, ctx["examples"], device,
                          args.warmup, ctx["profile"] if name in PROFILED else None, before=pre)
    finally:
        strip(model, base)
        if previous_attention is not None:
            vl.set_attention(base, previous_attention)
    plan.varlen, plan.balance, plan.round_to = use_varlen, balance, round_to
    plan.packing = packing
    res["distinct_shapes"] = len(seen["shapes"])
    res["varlen"], res["varlen_check"], res["varlen_launches"] = use_varlen, varlen_note, vl.launches - launches0
    res["balance"], res["round_to"] = balance, round_to
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    res["plan"] = plan.to_dict()
    res["kernels"] = "liger" if fused else "none"
    res["packing"] = packing
    res["optimizer"] = type(opt).__name__
    if device.type == "cuda" and seen["max_micro_tokens"]:
        res["measured_bytes_per_token"] = int((res["peak_gib"] * 2**30 - fixed) / seen["max_micro_tokens"])
    return res


PROFILED = ("ours-before", "ours", "ours-rows", "tuned", "packing-again", "liger-swiglu")
KERNEL_STUDY = [  # shapes seen once, then again (cuDNN attention plans are cached per shape), then liger part by part
    ("packing-first", dict(checkpointing="auto", budget="auto", packing=True)),
    ("packing-again", dict(checkpointing="auto", budget="auto", packing=True)),
    ("liger-rope", dict(checkpointing="auto", budget="auto", packing=True, kernels=("rope",))),
    ("liger-rmsnorm", dict(checkpointing="auto", budget="auto", packing=True, kernels=("rope", "rms_norm"))),
    ("liger-swiglu", dict(checkpointing="auto", budget="auto", packing=True, kernels=("rope", "rms_norm", "swiglu"))),
]
LEVERS = [  # cumulative: each adds one change to the one above
    ("ours-before", dict(legacy=True, checkpointing=True)),
    ("+no-host-syncs", dict(checkpointing=True, budget=2048)),
    ("+no-checkpointing", dict(checkpointing=False, budget=2048)),
    ("+token-budget-auto", dict(checkpointing="auto", budget="auto")),
    ("+packing", dict(checkpointing="auto", budget="auto", packing=True)),
    ("+liger-kernels", dict(checkpointing="auto", budget="auto", packing=True, kernels="auto")),
]


def recipe_settings(path: Path) -> dict:
    """What ``python -m pipeline finetune`` does by default with this recipe, as run_ours keywords."""
    from pipeline.core.config import load_recipe

    r = load_recipe(path)
    if r.train.micro_batch_tokens is None:
        return dict(legacy=True, checkpointing=r.model.gradient_checkpointing)
    return dict(checkpointing=r.model.gradient_checkpointing, budget=r.train.micro_batch_tokens,
                packing=r.data.packing, kernels=r.model.kernels,
                varlen={"auto": "auto", True: True, False: False}[r.model.varlen_attention],
                balance=r.data.pack_balance, round_to=r.data.pack_round_to)


def named_trainers(default: dict) -> dict[str, dict]:
    """``--only`` names -> run_ours keywords (``peer``, ``tuned`` and ``ours-cap`` are handled in main)."""
    rows = {**default, "varlen": False}
    return {
        "ours": default,
        # the default of the first speed round (issue 13): packed rows of up to 2,048, first-fit, SDPA mask
        "ours-round1": {**default, "varlen": False, "balance": False, "round_to": 1},
        # the ROCm / no-varlen fallback of this round: rows balanced within a micro-step, widths rounded to 128
        "ours-rows": rows,
        "ours-rows-warmup": {**rows, "warmup_shapes": True},
        "ours-warmup": {**default, "warmup_shapes": True},
        "ours-nokernels": {**default, "kernels": "none"},
        # torch's AdamW (multi-tensor, fp32 states) instead of bitsandbytes' paged 8-bit AdamW, which synchronizes
        # the device after every parameter's update (448 times a step here: docs/benchmarks.md, round two)
        "ours-adamw": {**default, "optimizer": "adamw"},
    }


# ----------------------------------------------------------------------------------------------------------------
# CLI


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="random:llama2-7b", help="model spec or folder (default: 7B shape, random)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random LLaMA for a CPU smoke run")
    ap.add_argument("--data", default=str(ROOT / "tests/data/medqa/us5_test.jsonl"))
    ap.add_argument("--limit", type=int, default=None, help="use only the first N questions")
    ap.add_argument("--recipe", default=str(ROOT / "recipes/medqa-qlora-7b.yaml"), help="'ours' runs its defaults")
    ap.add_argument("--vocab", type=int, default=3000)
    ap.add_argument("--per-step", type=int, default=32, help="sequences per optimizer step (the seed's 4 x 8)")
    ap.add_argument("--micro", type=int, default=8, help="the peer's micro-batch (gradient accumulation = 32/8)")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps of peer and ours (loss compared after)")
    ap.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    ap.add_argument("--levers", type=int, default=0, metavar="STEPS", help="also run each lever for STEPS steps")
    ap.add_argument("--cap-gb", type=float, default=0, help="also run ours with the process capped at this many GiB")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--kernel-study", type=int, default=0, metavar="STEPS",
                    help="instead of peer/levers: packing twice, then liger's RoPE, RMSNorm, SwiGLU one by one")
    ap.add_argument("--only", default=None, metavar="A,B",
                    help="run just these trainers, in order: peer (standard recipe), tuned (HF+PEFT+liger, padding-"
                         "free), ours, ours-round1, ours-rows, ours-warmup, ours-rows-warmup, ours-nokernels, "
                         "ours-adamw, ours-cap")
    ap.add_argument("--cap-steps", type=int, default=0, help="steps of ours-cap (default --steps)")
    ap.add_argument("--profile", default=None, help="folder for torch.profiler tables of one step each")
    ap.add_argument("--out", default=None, help="write all numbers as JSON here")
    args = ap.parse_args(argv)
    if args.tiny:
        args.model = TINY
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def prepare(args) -> dict:
    import importlib.util

    from pipeline.data.prompts import encode_example
    from pipeline.data.questions import load_questions

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    questions = load_questions(args.data)[: args.limit]
    tokenizer = medqa_tokenizer(questions, args.vocab)
    examples = [encode_example(tokenizer, q, "letter", 1024) for q in questions]
    nf4 = device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    words = sum(len(e.split()) for q in questions for e in [q.question] + list(q.options.values()))
    ctx = dict(device=device, examples=examples, pad=tokenizer.pad_token_id, nf4=nf4,
               longest=max(len(e["input_ids"]) for e in examples),
               steps=step_plan(len(examples), args.per_step,
                               max(args.steps, args.levers or 0, args.kernel_study or 0), args.seed),
               profile=Path(args.profile) if args.profile else None,
               tokens_per_word=sum(len(e["input_ids"]) for e in examples) / max(1, words))
    if ctx["profile"]:
        ctx["profile"].mkdir(parents=True, exist_ok=True)
    return ctx


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("transformers", "peft", "bitsandbytes", "liger_kernel", "triton"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = None
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["hip"] = getattr(torch.version, "hip", None)
        out["cuda"] = torch.version.cuda
    return out


def table(results: list[dict], meta: dict) -> str:
    peer = next((r for r in results if r["trainer"] == "peer"), None)
    tuned = next((r for r in results if r["trainer"] == "tuned"), None)
    lines = [f"{'trainer':<20} {'tok/s':>8} {'step s':>7} {'peak GiB':>8} {'loss end':>9} {'last5':>8} "
             f"{'TFLOP/s':>8} {'% mm':>5} {'x peer':>7} {'loss vs peer':>12} {'x tuned':>7} {'first5':>7} "
             f"{'shapes':>6}"]
    for r in results:
        tps = r["tokens_per_s"] or 0.0
        tflops = 4 * meta["base_params"] * tps / 1e12
        pct = f"{100 * tflops / meta['matmul_tflops']:.0f}" if meta.get("matmul_tflops") else "-"
        vs_tuned = f"{tps / tuned['tokens_per_s']:.2f}" if tuned and tuned["tokens_per_s"] else "-"
        ratio = f"{tps / peer['tokens_per_s']:.2f}" if peer and peer["tokens_per_s"] else "-"
        same_len = peer and len(peer["losses"]) == len(r["losses"])
        dloss = f"{100 * (r['final_loss'] / peer['final_loss'] - 1):+.2f}%" if same_len else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        lines.append(f"{r['trainer']:<20} {tps:8.0f} {r['median_step_s'] or 0:7.3f} {peak:>8} {r['final_loss']:9.4f} "
                     f"{r['mean_last5']:8.4f} {tflops:8.1f} {pct:>5} {ratio:>7} {dloss:>12} "
                     f"{vs_tuned:>7} "
                     f"{r.get('first5_tokens_per_s') or 0:7.0f} {r.get('distinct_shapes', '-')!s:>6}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    ctx = prepare(args)
    device = ctx["device"]
    if device.type == "cuda" and not ctx["nf4"]:
        # Every trainer needs bitsandbytes on a GPU (NF4 base, paged 8-bit AdamW): say so before a 13.5 GB load.
        print("bitsandbytes is not installed: the QLoRA trainers cannot run on this GPU (carry its wheel)", flush=True)
        return 2
    t0 = time.perf_counter()
    base = load_base(args.model, device, ctx["nf4"])
    meta = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "versions": versions(), "model": args.model, "nf4": ctx["nf4"], "questions": len(ctx["examples"]),
            "mean_tokens_per_sequence": sum(len(e["input_ids"]) for e in ctx["examples"]) / len(ctx["examples"]),
            "tokens_per_word": ctx["tokens_per_word"], "longest": ctx["longest"], "per_step": args.per_step,
            "base_params": base_params(base), "load_s": round(time.perf_counter() - t0, 1),
            "matmul_tflops": matmul_tflops(device)}
    print(json.dumps(meta), flush=True)
    results: list[dict] = []

    def record(run: Callable[[], dict], name: str) -> None:
        import gc

        try:
            res = run()
        except Exception as exc:  # noqa: BLE001
            # One trainer failing (out of memory: the plan was wrong) is a result, not the end of the run; the exit
            # status still says so.
            import traceback

            traceback.print_exc()
            print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            meta.setdefault("failed", {})[name] = str(exc)[:1000]
            return
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.append(res)
        print(f"{res['trainer']}: {res['tokens_per_s'] or 0:.0f} tokens/s, median step {res['median_step_s']} s, "
              f"peak {res['peak_gib']} GiB, loss {res['final_loss']:.4f}, plan {res.get('plan')}", flush=True)
        if args.out:
            from kit import atomic

            atomic.write_text(Path(args.out), json.dumps({"meta": meta, "results": results}, indent=1))

    def ours(name: str, steps: int = 0, **kw: Any) -> None:
        record(lambda: run_ours(base, args, ctx, name, steps=steps, **kw), name)

    if args.kernel_study:
        for name, kw in KERNEL_STUDY:
            ours(name, args.kernel_study, **kw)
        if args.cap_gb:
            ours(f"ours-{args.cap_gb:g}GiB", args.kernel_study, cap_gb=args.cap_gb,
                 **recipe_settings(Path(args.recipe)))
        print(table(results, meta))
        return 0 if not meta.get("failed") else 1
    if args.only:
        run_named(args, base, ctx, record, ours)
        levers = []
    else:
        record(lambda: run_peer(base, args, ctx), "peer")
        levers = LEVERS if args.levers else []
    for name, kw in levers[:-1]:  # kernels patch the base for good: the liger lever comes after the default run
        ours(name, args.levers, **kw)
    default = recipe_settings(Path(args.recipe))
    if not args.only:
        default_kernels = default.get("kernels", "none") != "none"
        if levers and not default_kernels:
            ours(levers[-1][0], args.levers, **levers[-1][1])
        ours("ours", **default)
        if levers and default_kernels:
            ours(levers[-1][0], args.levers, **levers[-1][1])
        if args.cap_gb:
            ours(f"ours-{args.cap_gb:g}GiB", args.levers, cap_gb=args.cap_gb, **default)
    if not results:
        return 1
    print(table(results, meta))
    step_tokens = meta["mean_tokens_per_sequence"] * args.per_step
    for r in results:
        if r["trainer"].startswith("ours") and r["tokens_per_s"]:
            print(f"{r['trainer']}: seed recipe projected on this device: 3000 steps x {args.per_step} sequences = "
                  f"{3000 * step_tokens / r['tokens_per_s'] / 60:.1f} min")
    peer = next((r for r in results if r["trainer"] == "peer"), None)
    if peer and peer["tokens_per_s"]:
        print(f"peer: seed recipe projected on this device: {3000 * step_tokens / peer['tokens_per_s'] / 60:.1f} min")
    return 0 if not meta.get("failed") else 1


def run_named(args, base, ctx: dict, record: Callable, ours: Callable) -> None:
    """``--only a,b,c``: these trainers in this order (the standard peer must come before anything that patches
    the base with liger's kernels)."""
    default = recipe_settings(Path(args.recipe))
    named = named_trainers(default)
    for name in args.only.split(","):
        if name == "peer":
            record(lambda: run_peer(base, args, ctx), "peer")
        elif name == "tuned":
            record(lambda: run_tuned(base, args, ctx), "tuned")
        elif name == "ours-cap":
            ours(f"ours-{args.cap_gb:g}GiB", args.cap_steps or args.steps, cap_gb=args.cap_gb, **default)
        elif name == "ours-matched":  # capped at the tuned peer's measured peak: the same memory as the peer
            cap = ctx.get("tuned_peak_gib")
            if cap:
                ours("ours-at-tuned-peak", args.cap_steps or args.steps, cap_gb=cap, **default)
        elif name in named:
            ours(name, **named[name])
        else:
            raise SystemExit(f"--only: unknown trainer {name!r} (peer, tuned, ours-cap, {', '.join(named)})")


if __name__ == "__main__":
    sys.exit(main())
