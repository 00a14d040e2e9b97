"""Speed round two (issue 24) on CPU: balanced and rounded packed rows, variable-length attention (its CPU reference),
the shape warm-up, the new recipe keys, and evaluate's batched tokenization. The numerics stay those of the first
round: one optimizer step gives the same loss and LoRA gradients as the Hugging Face model's own loss, however the
step is cut (padded, packed rows, balanced/rounded rows, one varlen row per micro-step)."""

from __future__ import annotations

import random

import pytest
import torch

from pipeline.core.config import RecipeError, load_recipe
from pipeline.data.packing import balanced_rows, plan_step, round_up

from .test_speed import _examples, _lora_step, _loss_and_grads  # one builder of each


def _medqa_like(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(1024, int(rng.lognormvariate(5.45, 0.35))) for _ in range(n)]  # mean ~250, MedQA-like tail


# --------------------------------------------------------------------------------------------------------------
# Cutting a step


def test_balanced_rows_keep_every_sequence_and_even_out_the_rows():
    lengths = _medqa_like(32, 1)
    rows = balanced_rows(lengths, 5)
    assert sorted(i for row in rows for i in row) == list(range(32))
    sums = [sum(lengths[i] for i in row) for row in rows]
    assert max(sums) - min(sums) <= max(lengths)  # longest-first into the emptiest row


def test_rounded_balanced_rows_cut_padding_and_shapes():
    steps = [_examples(_medqa_like(8, seed)) for seed in range(40)]  # 8 sequences a step, the recipe default
    first = [plan_step(ex, 0, token_budget=8192, packing=True) for ex in steps]
    rows = [plan_step(ex, 0, token_budget=8192, packing=True, balance=True, round_to=128) for ex in steps]
    for a, b in zip(first, rows, strict=True):
        assert a.real_tokens == b.real_tokens and a.answer_tokens == b.answer_tokens
        assert all(m.input_ids.shape[1] % 128 == 0 or m.input_ids.shape[1] == 2048 for m in b.micro)
    padded = lambda plans: sum(s.padded_tokens for s in plans) / sum(s.real_tokens for s in plans)  # noqa: E731
    shapes = lambda plans: len({tuple(m.input_ids.shape) for s in plans for m in s.micro})  # noqa: E731
    assert padded(rows) < padded(first)
    assert shapes(rows) < shapes(first)


def test_varlen_micro_steps_are_one_unpadded_row_with_boundaries():
    ex = _examples([30, 17, 45, 9, 60, 22])
    step = plan_step(ex, 0, token_budget=100, packing=True, varlen=True)
    assert step.padded_tokens == step.real_tokens == 183  # no padding at all
    for m in step.micro:
        assert m.input_ids.shape[0] == 1 and m.input_ids.shape[1] <= 100
        cu = m.cu_seqlens.tolist()
        assert cu[0] == 0 and cu[-1] == m.input_ids.shape[1] and m.cu_seqlens.dtype == torch.int32
        assert m.max_seqlen == max(b - a for a, b in zip(cu[:-1], cu[1:], strict=False))
        starts = set(cu[:-1])
        assert all((m.position_ids[0, t] == 0) == (t in starts) for t in range(m.input_ids.shape[1]))
        inputs = m.inputs(torch.device("cpu"))
        assert inputs["max_length_q"] == m.max_seqlen and inputs["cu_seq_lens_k"] is inputs["cu_seq_lens_q"]


def test_rounded_varlen_streams_repeat_shapes_and_pad_in_a_segment_of_their_own():
    steps = [_examples(_medqa_like(8, seed)) for seed in range(40)]
    plain = [plan_step(ex, 0, token_budget=8192, packing=True, varlen=True) for ex in steps]
    rounded = [plan_step(ex, 0, token_budget=8192, packing=True, varlen=True, round_to=128) for ex in steps]
    shapes = lambda plans: len({tuple(m.input_ids.shape) for s in plans for m in s.micro})  # noqa: E731
    assert shapes(rounded) < shapes(plain) / 2
    for a, b in zip(plain, rounded, strict=True):
        assert a.real_tokens == b.real_tokens and a.answer_tokens == b.answer_tokens
        for ma, mb in zip(a.micro, b.micro, strict=True):
            width, real = mb.input_ids.shape[1], ma.input_ids.shape[1]
            assert width % 128 == 0 and real <= width < real + 128
            cu = mb.cu_seqlens.tolist()
            if width > real:  # the padding is one more segment, positions from 0, never a target
                assert cu[-2:] == [real, width] and mb.position_ids[0, real] == 0
                assert bool((mb.input_ids[0, real:] == 0).all())
            assert cu[:len(ma.cu_seqlens)] == ma.cu_seqlens.tolist()
            assert torch.equal(mb.answer_index, ma.answer_index) and torch.equal(mb.answer_target, ma.answer_target)


def test_round_up():
    assert [round_up(n, 128) for n in (1, 128, 129, 2047)] == [128, 128, 256, 2048]
    assert round_up(77, 1) == 77


# --------------------------------------------------------------------------------------------------------------
# Numerics: the same step whatever the cut


def test_one_step_same_loss_and_gradients_rows_and_varlen_as_hf(tiny_model_dir):
    from pipeline.data.packing import packing_unsupported
    from pipeline.model.varlen import set_attention, use_varlen
    from pipeline.train.step import AnswerPositionLoss, accumulate

    if packing_unsupported("sdpa") is not None:
        pytest.skip(packing_unsupported("sdpa"))
    base, model, ex, hf = _lora_step(tiny_model_dir)
    cpu, module = torch.device("cpu"), AnswerPositionLoss(model)

    ref_loss, ref_grads = _loss_and_grads(model, hf)
    cuts = [dict(token_budget=128, packing=True, row_width=128, balance=True, round_to=16),
            dict(token_budget=4096, packing=True, row_width=128, balance=True, round_to=32),
            dict(token_budget=128, packing=True, varlen=True), dict(token_budget=4096, packing=True, varlen=True),
            dict(token_budget=4096, packing=True, varlen=True, round_to=64)]
    previous = None
    for cut in cuts:
        if cut.get("varlen") and previous is None:
            previous = use_varlen(model)  # the CPU reference of varlen attention: one causal SDPA per sequence
        step = plan_step(ex, 0, **cut)
        loss, grads = _loss_and_grads(model, lambda step=step: accumulate(module, step, cpu))
        assert loss == pytest.approx(ref_loss, rel=1e-5), cut
        for n in ref_grads:
            torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=f"{n} {cut}")
    # With varlen attention set, a padded batch (evaluation after training) still gets its padding mask.
    loss, _ = _loss_and_grads(model, hf)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    set_attention(base, previous)


def test_warm_up_runs_each_shape_once_and_leaves_no_gradient(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.train.step import AnswerPositionLoss, warm_up

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", target_modules=["q_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    steps = [plan_step(_examples(_medqa_like(8, s)), 0, token_budget=4096, packing=True, balance=True, round_to=256)
             for s in range(6)]
    shapes = {tuple(m.input_ids.shape) for st in steps for m in st.micro}
    assert warm_up(AnswerPositionLoss(model), steps, torch.device("cpu"), params) == len(shapes)
    assert all(p.grad is None for p in params)


# --------------------------------------------------------------------------------------------------------------
# Switches and their fallbacks


def test_varlen_falls_back_on_cpu_and_recipe_keys_are_checked(tiny_model_dir):
    from pipeline.model.varlen import varlen_unavailable

    assert "cpu" in varlen_unavailable(torch.device("cpu"))
    r = load_recipe(None, ["model.varlen_attention=false", "data.pack_round_to=256", "data.pack_balance=false"])
    assert (r.model.varlen_attention, r.data.pack_round_to, r.data.pack_balance) == (False, 256, False)
    assert load_recipe(None, []).model.varlen_attention == "auto"
    with pytest.raises(RecipeError):
        load_recipe(None, ["data.pack_round_to=0"])
    with pytest.raises(RecipeError):
        load_recipe(None, ["model.varlen_attention=sometimes"])


def test_plan_run_states_why_varlen_is_off_and_refuses_when_insisted(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from pipeline.core.errors import UnsupportedError
    from pipeline.train.memory_plan import MemoryPlan
    from pipeline.train.step import _plan_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for mode in ("auto", False):
        recipe = load_recipe(None, [f"model.varlen_attention={str(mode).lower()}"])
        plan = MemoryPlan(False, 4096, 0, 1, "", packing=True)
        _plan_rows(recipe, model, plan, torch.device("cpu"))
        assert plan.varlen is False and plan.varlen_reason and plan.balance and plan.round_to == 128
    plan = MemoryPlan(False, 4096, 0, 1, "", packing=True)
    with pytest.raises(UnsupportedError, match="varlen_attention is true"):
        _plan_rows(load_recipe(None, ["model.varlen_attention=true"]), model, plan, torch.device("cpu"))


# --------------------------------------------------------------------------------------------------------------
# Evaluate: batched tokenization gives encode_pair's ids


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
@pytest.mark.parametrize("add_bos", ["auto", "always", "never"])
def test_batched_encoding_equals_encode_pair(tiny_tokenizer, medqa_test_path, scoring, add_bos):
    from pipeline.data.questions import read_questions
    from pipeline.evaluate.scoring import _encode, _encode_all

    questions = read_questions(medqa_test_path).questions[:40]
    old = [_encode(tiny_tokenizer, q, scoring, 300, add_bos) for q in questions]  # 300: some prompts truncated
    new = _encode_all(tiny_tokenizer, questions, scoring, 300, add_bos)
    assert [(i.context, i.choices) for i in new] == [(i.context, i.choices) for i in old]


def test_varlen_micro_steps_reach_the_varlen_attention_function(tiny_model_dir, monkeypatch):
    """The loss equality above would also hold if the packed row silently fell back to SDPA's mask: check that the
    boundaries built on the host reach every layer's attention function (here its CPU reference)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.model import varlen
    from pipeline.train.step import AnswerPositionLoss

    seen: list[list[int]] = []
    reference = varlen._reference
    monkeypatch.setattr(varlen, "_reference", lambda q, k, v, cu, scale: seen.append(cu.tolist()) or
                        reference(q, k, v, cu, scale))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    varlen.use_varlen(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", target_modules=["q_proj"]))
    step = plan_step(_examples([10, 20, 30]), 0, token_budget=100, packing=True, varlen=True)
    AnswerPositionLoss(model)(**step.micro[0].inputs(torch.device("cpu")))
    assert seen == [[0, 30, 50, 60]] * base.config.num_hidden_layers
