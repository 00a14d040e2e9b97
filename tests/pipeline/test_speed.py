"""The fast training path (issue 13) on CPU: micro-batch cuts and packing, the memory plan, the kernels switch,
and the numerics: one optimizer step gives the same loss and gradients however its sequences are cut, padded
or packed, and the same as the Hugging Face model's own loss over the step's answer tokens."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from pipeline.core.config import RecipeError, load_recipe
from pipeline.data.packing import pack_rows, packed_batch, plan_step, split_by_budget
from pipeline.data.prompts import IGNORE_INDEX
from pipeline.train.memory_plan import GIB, activation_bytes_per_token, plan_memory

LLAMA7B = SimpleNamespace(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32)


def _examples(lengths: list[int], seed: int = 0, vocab: int = 500) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        # answer letter + EOS at the end, as prompts.encode_example builds them
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n - 2) + ids[-2:]})
    return out


# --------------------------------------------------------------------------------------------------------------
# Cutting a step


def test_split_by_budget_keeps_every_sequence_once_and_within_budget():
    lengths = [random.Random(1).randrange(40, 900) for _ in range(32)]
    groups = split_by_budget(lengths, 2048)
    assert sorted(i for g in groups for i in g) == list(range(32))
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 2048


def test_split_by_budget_gives_an_oversized_sequence_its_own_group():
    assert split_by_budget([3000, 10, 10], 2048) == [[0], [1, 2]]
    with pytest.raises(ValueError, match="token_budget must be at least 1"):
        split_by_budget([1], 0)


def test_pack_rows_first_fit_decreasing_within_width():
    lengths = [700, 600, 500, 400, 300, 200, 100]
    rows = pack_rows(lengths, 1000)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert all(sum(lengths[i] for i in r) <= 1000 for r in rows)
    assert len(rows) == 3  # 2800 tokens cannot fit in fewer than 3 rows of 1000


def test_packed_batch_restarts_positions_and_points_at_answer_tokens():
    ex = _examples([5, 3])
    mb = packed_batch([[ex[0], ex[1]]], pad_id=0)
    assert mb.attention_mask is None
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    # answers: last two tokens of each sequence; position t predicts t+1
    assert mb.answer_index.tolist() == [2, 3, 5, 6]
    flat = mb.input_ids.reshape(-1)
    assert [int(flat[i + 1]) for i in mb.answer_index] == mb.answer_target.tolist()
    assert mb.answer_target.tolist() == ex[0]["input_ids"][-2:] + ex[1]["input_ids"][-2:]
    assert mb.real_tokens == 8 and mb.sequences == 2


def test_packed_row_padding_is_a_sequence_of_its_own():
    ex = _examples([6, 2, 2])
    step = plan_step(ex, pad_id=0, token_budget=16, packing=True, row_width=8)
    first = step.micro[0]
    # row 0: the 6-token sequence + one 2-token one; row 1: the other 2-token one + 6 padding tokens from position 0
    assert first.position_ids[1].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    # a 2-token sequence's first token is a label but nothing in its own sequence predicts it: not trained, packed
    # or padded alike (the previous sequence's last token must not learn to predict it)
    padded = plan_step(ex, pad_id=0, token_budget=16, packing=False)
    assert step.real_tokens == 10 and step.answer_tokens == padded.answer_tokens == 2 + 1 + 1


def test_plan_step_counts_are_those_of_the_sequences():
    ex = _examples([random.Random(2).randrange(20, 300) for _ in range(32)])
    for packing in (False, True):
        step = plan_step(ex, pad_id=0, token_budget=1024, packing=packing, row_width=512)
        assert step.real_tokens == sum(len(e["input_ids"]) for e in ex)
        assert step.answer_tokens == 2 * 32
        assert sum(m.sequences for m in step.micro) == 32
        assert all(m.input_ids.numel() <= 1024 for m in step.micro)


# --------------------------------------------------------------------------------------------------------------
# Memory plan


def test_plan_skips_checkpointing_when_activations_fit():
    plan = plan_memory(LLAMA7B, free=130 * GIB, longest=1024)
    assert not plan.gradient_checkpointing and plan.token_budget >= 8192
    assert "without checkpointing" in plan.reason


def test_plan_checkpoints_when_little_memory_is_free():
    plan = plan_memory(LLAMA7B, free=12 * GIB, longest=1024)
    assert plan.gradient_checkpointing and plan.token_budget >= 1024


def test_plan_64gb_gcd_stays_without_checkpointing_but_smaller_steps():
    big, small = plan_memory(LLAMA7B, free=130 * GIB, longest=1024), plan_memory(LLAMA7B, free=60 * GIB, longest=1024)
    assert not small.gradient_checkpointing and small.token_budget < big.token_budget
    # the budget must really fit: activations of a full micro-step within the free memory
    assert small.token_budget * activation_bytes_per_token(LLAMA7B, checkpointing=False) < 60 * GIB


def test_plan_refuses_what_cannot_fit_naming_the_fix():
    with pytest.raises(MemoryError, match="data.max_length"):
        plan_memory(LLAMA7B, free=3 * GIB, longest=1024, checkpointing=False)
    with pytest.raises(ValueError, match="train.micro_batch_tokens is 512"):
        plan_memory(LLAMA7B, free=130 * GIB, longest=1024, token_budget=512)


def test_plan_respects_explicit_settings():
    plan = plan_memory(LLAMA7B, free=130 * GIB, longest=1024, checkpointing=True, token_budget=4096)
    assert plan.gradient_checkpointing and plan.token_budget == 4096


def test_fused_swiglu_needs_less_memory_per_token():
    assert (activation_bytes_per_token(LLAMA7B, checkpointing=False, fused_swiglu=True)
            < activation_bytes_per_token(LLAMA7B, checkpointing=False))
    assert activation_bytes_per_token(LLAMA7B, checkpointing=True) * 10 < activation_bytes_per_token(
        LLAMA7B, checkpointing=False)


# --------------------------------------------------------------------------------------------------------------
# Kernels switch


def test_kernels_fall_back_on_cpu_and_refuse_when_insisted(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from pipeline.model.kernels import apply_kernels
    from pipeline.model.load import UnsupportedError

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    kernels, why = apply_kernels(model, "auto", torch.device("cpu"))
    assert kernels == "none" and "need a GPU" in why
    assert apply_kernels(model, "none", torch.device("cpu")) == ("none", "model.kernels is 'none'")
    with pytest.raises(UnsupportedError, match="model.kernels is 'liger'"):
        apply_kernels(model, "liger", torch.device("cpu"))


# --------------------------------------------------------------------------------------------------------------
# Numerics: same step, any cut


def _loss_and_grads(model, run) -> tuple[float, dict[str, torch.Tensor]]:
    for p in model.parameters():
        p.grad = None
    loss = run()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def _lora_step(tiny_model_dir):
    """The tiny model (fp32, SDPA) with LoRA whose B is non-zero (so every LoRA matrix gets a gradient), one step's
    12 answer-labelled examples, and the peer: the model's own loss over 3 micro-batches of 4, normalized by the
    step's answer tokens. Returns (base, model, examples, peer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.data.batching import collate

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "v_proj", "gate_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ex = _examples([random.Random(3).randrange(8, 60) for _ in range(12)])
    answers = sum(sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in ex)

    def hf() -> float:
        total = 0.0
        for s in range(0, 12, 4):
            out = model(**collate(ex[s:s + 4], 0), num_items_in_batch=answers)
            out.loss.backward()
            total += float(out.loss.detach())
        return total

    return base, model, ex, hf


def test_one_step_same_loss_and_gradients_padded_packed_and_hf(tiny_model_dir):
    from pipeline.train.step import AnswerPositionLoss, accumulate

    _, model, ex, hf = _lora_step(tiny_model_dir)
    cpu, module = torch.device("cpu"), AnswerPositionLoss(model)
    from pipeline.data.packing import packing_unsupported

    ref_loss, ref_grads = _loss_and_grads(model, hf)
    cuts = [(False, 64), (False, 4096)]
    if packing_unsupported("sdpa") is None:  # else packing falls back to padding (test_packing_gate_* below)
        cuts += [(True, 128), (True, 4096)]
    for packing, budget in cuts:
        step = plan_step(ex, 0, token_budget=budget, packing=packing, row_width=128)
        loss, grads = _loss_and_grads(model, lambda step=step: accumulate(module, step, cpu))
        assert loss == pytest.approx(ref_loss, rel=1e-5), (packing, budget)
        assert grads.keys() == ref_grads.keys()
        for n in grads:
            torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=f"{n} {packing} {budget}")


# --------------------------------------------------------------------------------------------------------------
# Recipe keys and the loop


def test_recipe_speed_keys_typed_and_checked():
    r = load_recipe(None, ["model.gradient_checkpointing=auto", "train.micro_batch_tokens=auto", "data.packing=true",
                           "train.memory_budget_gb=64"])
    assert (r.model.gradient_checkpointing, r.train.micro_batch_tokens, r.data.packing) == ("auto", "auto", True)
    assert r.train.memory_budget_gb == 64.0
    with pytest.raises(RecipeError, match="'model.gradient_checkpointing' must be true or false or 'auto'"):
        load_recipe(None, ["model.gradient_checkpointing=sometimes"])
    with pytest.raises(RecipeError, match="'train.micro_batch_tokens' must be at least 1"):
        load_recipe(None, ["train.micro_batch_tokens=0"])
    with pytest.raises(RecipeError, match="'train.memory_budget_gb' must be greater than 0"):
        load_recipe(None, ["train.memory_budget_gb=-1"])
    with pytest.raises(RecipeError, match="'data.packing' needs train.micro_batch_tokens"):
        load_recipe(None, ["data.packing=true"])
    with pytest.raises(RecipeError, match="'model.kernels' must be one of"):
        load_recipe(None, ["model.kernels=fast"])


def test_seed_recipe_takes_the_fast_path():
    from pathlib import Path

    r = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "medqa-qlora-7b.yaml")
    assert r.train.micro_batch_tokens == "auto" and r.data.packing
    assert r.model.gradient_checkpointing == "auto" and r.model.kernels == "auto"


def test_finetune_fast_path_learns_and_reports_its_plan(tiny_model_dir, tmp_path):
    from pipeline.finetune import finetune

    from .recipe_helpers import tiny_recipe

    recipe = tiny_recipe(tiny_model_dir, tmp_path, extra=[
        "train.steps=12", "train.log_every=100", "train.batch_size=2", "train.grad_accum=2",
        "train.micro_batch_tokens=auto", "data.packing=true", "model.gradient_checkpointing=auto"])
    report = finetune(recipe)
    t = report["training"]
    losses = t["losses"]
    from pipeline.data.packing import packing_unsupported

    assert len(losses) == 12 and t["packing"] is (packing_unsupported("sdpa") is None)
    assert t["memory_plan"]["gradient_checkpointing"] is False and "CPU" in t["memory_plan"]["reason"]
    assert report["model"]["kernels"] == "none"
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses


def test_kernels_refuse_old_torch_on_rocm(tiny_model_dir, monkeypatch):
    import importlib.util

    from transformers import AutoModelForCausalLM

    from pipeline.model import kernels

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(kernels.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.version, "hip", "6.1.40093", raising=False)
    monkeypatch.setattr(torch, "__version__", "2.3.1+rocm6.0")
    why = kernels.kernels_unavailable(model, torch.device("cuda", 0))
    assert why is not None and "ROCm needs torch >= 2.5" in why


def _liger_that_fails_on_import(monkeypatch, message: str):
    """A stand-in liger_kernel whose patch API raises on import, as liger-kernel 0.8.5 does under transformers <
    5.0 (only the import is stood in; the probe and the fallback around it are the real code)."""
    import importlib.util
    import sys
    import types

    from pipeline.model import kernels

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(kernels.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a))
    package = types.ModuleType("liger_kernel")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    broken = types.ModuleType("liger_kernel.transformers")

    def refuse(name):
        raise ImportError(message)

    broken.__getattr__ = refuse
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", broken)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    return kernels


def test_auto_kernels_fall_back_when_the_patch_api_refuses_this_transformers(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    kernels = _liger_that_fails_on_import(monkeypatch, "liger-kernel requires transformers >= 5.0.0, got 4.57.6")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    used, why = kernels.apply_kernels(model, "auto", torch.device("cuda", 0))
    assert used == "none"
    assert why.startswith("auto: liger-kernel failed its first launch: ImportError: liger-kernel requires "
                          "transformers >= 5.0.0"), why
    with pytest.raises(kernels.UnsupportedError, match="model.kernels is 'liger' but it cannot run here"):
        kernels.apply_kernels(model, "liger", torch.device("cuda", 0))


@pytest.mark.gpu
def test_first_launch_runs_a_real_fused_kernel_on_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA or ROCm GPU: the probe launches a Triton kernel")
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
    from pipeline.model import kernels

    kernels.first_launch(torch.device("cuda", 0))  # raises on an import, launcher or numerical failure


@pytest.mark.gpu
def test_auto_kernels_turn_on_for_a_llama_on_the_gpu(tiny_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA or ROCm GPU: the kernels are Triton")
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
    from transformers import AutoModelForCausalLM

    from pipeline.model import kernels

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).to("cuda")
    used, why = kernels.apply_kernels(model, "auto", torch.device("cuda", 0))
    assert used == "liger", why


@pytest.mark.parametrize("tf, th, attention, ok", [
    ("5.24.0", "2.13.0+cpu", "sdpa", True),
    ("4.57.6", "2.3.1+cu121", "sdpa", False),  # the images' stack: transformers skips the packed mask there
    ("4.57.6", "2.3.1+rocm6.0", "flash_attention_2", True),
    ("4.57.6", "2.6.0", "sdpa", True),
    ("4.50.0", "2.6.0", "eager", False),
])
def test_packing_gate_follows_what_transformers_masks(monkeypatch, tf, th, attention, ok):
    import transformers

    from pipeline.data.packing import packing_unsupported

    monkeypatch.setattr(transformers, "__version__", tf)
    monkeypatch.setattr(torch, "__version__", th)
    why = packing_unsupported(attention)
    assert (why is None) is ok, why
    if not ok:
        assert "does not mask packed sequences apart" in why


def test_packed_rows_attend_only_within_their_sequence_where_supported(tiny_model_dir):
    """The premise of packing, checked on the installed stack: a packed row's hidden states equal each sequence's
    own, run alone; and the gate says so exactly when it holds."""
    from transformers import AutoModelForCausalLM

    from pipeline.data.packing import packing_unsupported

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    ex = _examples([7, 5])
    mb = packed_batch([[ex[0], ex[1]]], pad_id=0)
    with torch.no_grad():
        # use_cache=False as in training: with a cache transformers does not look for packed sequences at all
        packed = model.model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False)[0][0]
        alone = model.model(input_ids=torch.tensor([ex[1]["input_ids"]]), use_cache=False)[0][0]
    apart = torch.allclose(packed[7:12], alone, atol=1e-5)
    assert apart is (packing_unsupported("sdpa") is None)
