"""Log-likelihood evaluation: hand-computed scores, acc vs acc_norm, padding invariance, shared-prompt == full path."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from pipeline.data.questions import Question, load_questions
from pipeline.evaluate.scoring import EvalResult, evaluate, write_eval

VOCAB = 128
LOG_V = math.log(VOCAB)


class CharTokenizer:
    """One token per ASCII character; no BOS/EOS, so every token in a score is visible in the test."""

    bos_token_id = None
    eos_token_id = None
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class NullCache:
    """Stands in for a KV cache: the bigram model below needs no past, but evaluate gathers the cache by row."""

    def __init__(self):
        self.selected = []

    def batch_select_indices(self, indices):
        self.selected.append(indices.tolist())


class BigramLM(torch.nn.Module):
    """The logits at a position are ``table[token at that position]``: every log-likelihood can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(VOCAB, VOCAB), requires_grad=False)
        self.embed = torch.nn.Embedding(VOCAB, 1)
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.modes = []

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0, past_key_values=None,
                position_ids=None):
        self.modes.append(self.training)
        logits = self.table[input_ids]
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        elif logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=past_key_values or (NullCache() if use_cache else None))


LENGTHS_Q = Question("Pick one.", {"A": "ab", "B": "abcdefgh", "C": "abcd"}, "B", "m1", "hand:1")


@pytest.mark.parametrize("method", ["shared-prompt", "full"])
def test_uniform_model_hand_computed_scores_and_acc_norm_differs_from_acc(method):
    # Uniform logits: every token has log p = -log 128, so " ab" (3 tokens) scores -3 log 128. acc picks the shortest
    # option (A, wrong); acc_norm divides by the option's length in characters as lm-eval does: -3/2, -9/8, -5/4
    # (x log 128) -> B, right.
    result = evaluate(BigramLM(), CharTokenizer(), [LENGTHS_Q], scoring="cloze", method=method)
    (pred,) = result.predictions
    assert pred["scores"] == pytest.approx({"A": -3 * LOG_V, "B": -9 * LOG_V, "C": -5 * LOG_V}, abs=1e-4)
    assert (pred["predicted"], pred["correct"]) == ("A", False)
    assert (pred["predicted_norm"], pred["correct_norm"]) == ("B", True)
    assert result.metrics["accuracy"] == 0.0 and result.metrics["acc_norm"] == 1.0


def test_letter_scoring_hand_computed_and_ties_go_to_the_first_option():
    model = BigramLM()
    # " A" is two character tokens here: " " after ":" and "A" after " ".
    tied = evaluate(model, CharTokenizer(), [LENGTHS_Q], scoring="letter")
    assert tied.predictions[0]["scores"] == pytest.approx({"A": -2 * LOG_V, "B": -2 * LOG_V, "C": -2 * LOG_V})
    assert tied.predictions[0]["predicted"] == "A"  # numpy.argmax (lm-eval) also takes the first of equal scores
    assert "acc_norm" not in tied.metrics
    model.table.data[ord(" "), ord("C")] = 2.0  # after a space, "C" gets logit 2, the other 127 tokens 0
    pred = evaluate(model, CharTokenizer(), [LENGTHS_Q], scoring="letter").predictions[0]
    rest = -math.log(127 + math.exp(2.0))
    assert pred["scores"] == pytest.approx({"A": -LOG_V + rest, "B": -LOG_V + rest, "C": -LOG_V + 2.0 + rest})
    assert pred["predicted"] == "C"


class NoLogitsToKeepLM(BigramLM):
    """An architecture whose forward has no logits_to_keep argument: evaluate must take all logits instead."""

    def forward(self, input_ids, attention_mask=None, use_cache=False, past_key_values=None, position_ids=None):
        return super().forward(input_ids, attention_mask, use_cache, 0, past_key_values, position_ids)


def test_models_without_logits_to_keep_score_the_same():
    pred = evaluate(NoLogitsToKeepLM(), CharTokenizer(), [LENGTHS_Q], scoring="cloze").predictions[0]
    assert pred["scores"] == pytest.approx({"A": -3 * LOG_V, "B": -9 * LOG_V, "C": -5 * LOG_V}, abs=1e-4)


def test_model_is_scored_in_eval_mode_and_its_mode_is_restored():
    model = BigramLM()
    model.train()
    evaluate(model, CharTokenizer(), [LENGTHS_Q], scoring="cloze")
    assert model.modes and not any(model.modes)
    assert model.training


def test_metrics_overall_and_per_meta_info_and_limit():
    uniform = BigramLM()
    qs = [
        Question("a?", {"A": "x", "B": "yy"}, "A", "step1", "m:1"),  # shortest wins -> correct
        Question("b?", {"A": "xx", "B": "y"}, "A", "step1", "m:2"),  # wrong
        Question("c?", {"A": "x", "B": "yy", "C": "zzz"}, "A", "step2&3", "m:3"),  # correct
        Question("d?", {"A": "x", "B": "yy"}, "B", None, "m:4"),  # wrong, no meta_info
    ]
    metrics = evaluate(uniform, CharTokenizer(), qs, scoring="cloze").metrics
    assert (metrics["count"], metrics["correct"], metrics["accuracy"]) == (4, 2, 0.5)
    assert metrics["scoring"] == "cloze"
    assert metrics["chance_accuracy"] == pytest.approx((0.5 + 0.5 + 1 / 3 + 0.5) / 4)
    assert metrics["by_meta_info"]["step1"] == {"count": 2, "correct": 1, "accuracy": 0.5, "correct_norm": 1,
                                                "acc_norm": 0.5, "chance_accuracy": 0.5}
    assert set(metrics["by_meta_info"]) == {"step1", "step2&3"}
    assert metrics["by_meta_info"]["step2&3"]["correct"] == 1
    limited = evaluate(uniform, CharTokenizer(), qs, scoring="cloze", limit=2)
    assert limited.metrics["count"] == 2 and [p["source"] for p in limited.predictions] == ["m:1", "m:2"]


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="scoring must be 'letter' or 'cloze'"):
        evaluate(BigramLM(), CharTokenizer(), [LENGTHS_Q], scoring="text")
    with pytest.raises(ValueError, match="no questions to evaluate"):
        evaluate(BigramLM(), CharTokenizer(), [], scoring="letter")


@pytest.fixture(scope="module")
def mixed_questions(demo_data_paths, request):
    """Short 4-option demo questions plus, when available, long 5-option MedQA ones (very different lengths)."""
    questions = load_questions(demo_data_paths[1])[:6]
    try:
        medqa = request.getfixturevalue("medqa_test_path")
    except pytest.skip.Exception:
        return questions
    # The two shortest of the first 40 (still ~300 tokens with the tiny tokenizer, 5-10x the demo ones): enough to
    # pad the demo questions heavily while keeping the test fast.
    long_ones = sorted(load_questions(medqa)[:40], key=lambda q: len(q.question) + sum(map(len, q.options.values())))
    return questions + long_ones[:2]


def all_scores(result: EvalResult) -> list[float]:
    return [v for p in result.predictions for v in p["scores"].values()]


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_shared_prompt_path_equals_one_sequence_per_choice(tiny_model, tiny_tokenizer, mixed_questions, scoring):
    shared = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring=scoring, batch_size=4)
    full = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring=scoring, batch_size=5, method="full")
    assert all_scores(shared) == pytest.approx(all_scores(full), rel=1e-5, abs=1e-4)
    assert [p["predicted"] for p in shared.predictions] == [p["predicted"] for p in full.predictions]


@pytest.mark.parametrize("method", ["shared-prompt", "full"])
def test_padding_cannot_change_a_score(tiny_model, tiny_tokenizer, mixed_questions, method):
    alone = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=1, method=method)
    crowded = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=64, method=method)
    assert all_scores(alone) == pytest.approx(all_scores(crowded), rel=1e-5, abs=1e-4)


def test_two_runs_give_identical_predictions(tiny_model, tiny_tokenizer, mixed_questions):
    first = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=3)
    second = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=3)
    assert first.predictions == second.predictions and first.metrics == second.metrics


def test_bfloat16_model_is_scored_in_its_own_dtype(tiny_model, tiny_tokenizer, mixed_questions):
    reference = evaluate(tiny_model, tiny_tokenizer, mixed_questions[:4], scoring="cloze")
    tiny_model.to(torch.bfloat16)
    low = evaluate(tiny_model, tiny_tokenizer, mixed_questions[:4], scoring="cloze")
    assert tiny_model.dtype == torch.bfloat16
    assert all_scores(low) == pytest.approx(all_scores(reference), rel=0.05, abs=0.5)
    assert all_scores(low) != all_scores(reference)  # it really ran in bf16


def test_write_eval_writes_predictions_and_metrics(tmp_path):
    result = evaluate(BigramLM(), CharTokenizer(), [LENGTHS_Q, LENGTHS_Q], scoring="cloze")
    write_eval(result, tmp_path / "out")
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["index"] for r in rows] == [0, 1]
    assert set(rows[0]) >= {"index", "source", "gold", "predicted", "scores", "meta_info"}
    assert rows[0]["gold"] == "B" and rows[0]["source"] == "hand:1"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == result.metrics
    assert sorted(os.listdir(tmp_path / "out")) == ["metrics.json", "predictions.jsonl"]


def test_write_eval_is_atomic_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    result = evaluate(BigramLM(), CharTokenizer(), [LENGTHS_Q], scoring="cloze")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_eval(result, out)
    assert (out / "metrics.json").read_text() == '{"old": true}'
    assert sorted(os.listdir(out)) == ["metrics.json"]  # no temp file left behind


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU: checks evaluation on the device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_gpu_shared_prompt_equals_full_and_padding_is_harmless(tiny_model, tiny_tokenizer, mixed_questions, dtype):
    # GPU kernels (SDPA/flash paths, bf16 matmuls) differ from the CPU's: the same guarantees must hold there.
    tiny_model.to(device="cuda", dtype=dtype)
    tol = {"rel": 1e-4, "abs": 1e-3} if dtype == torch.float32 else {"rel": 0.02, "abs": 0.25}
    shared = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=4)
    full = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=5, method="full")
    alone = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=1)
    assert all_scores(shared) == pytest.approx(all_scores(full), **tol)
    assert all_scores(shared) == pytest.approx(all_scores(alone), **tol)
    cpu = evaluate(tiny_model.to(device="cpu", dtype=torch.float32), tiny_tokenizer, mixed_questions, scoring="cloze")
    assert all_scores(shared) == pytest.approx(all_scores(cpu), **tol)


def test_token_budget_batches_and_bad_budget():
    from pipeline.evaluate.scoring import _Item, _prompt_batches

    items = [_Item([1] * n, [[1]]) for n in (10, 8, 5, 5, 3, 2)]  # already longest first
    order = list(range(len(items)))
    assert list(_prompt_batches(items, order, 4, None)) == [[0, 1, 2, 3], [4, 5]]
    # 20 padded tokens: two rows of the 10-token prompt, then four rows of 5, then the rest.
    assert list(_prompt_batches(items, order, 99, 20)) == [[0, 1], [2, 3, 4, 5]]
    assert list(_prompt_batches(items, order, 3, 20)) == [[0, 1], [2, 3, 4], [5]]
    # A prompt longer than the budget still runs, alone.
    assert list(_prompt_batches(items, order, 99, 6)) == [[0], [1], [2], [3], [4, 5]]
    with pytest.raises(ValueError, match="token_budget must be at least 1"):
        evaluate(BigramLM(), CharTokenizer(), [LENGTHS_Q], scoring="letter", token_budget=0)


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_token_budget_scores_equal_one_sequence_per_choice(tiny_model, tiny_tokenizer, mixed_questions, scoring):
    full = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring=scoring, batch_size=5, method="full")
    for budget in (1, 300, 100_000):
        shared = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring=scoring, batch_size=64,
                          token_budget=budget)
        assert all_scores(shared) == pytest.approx(all_scores(full), rel=1e-5, abs=1e-4), budget


def test_choice_chunks_gather_from_the_prompt_cache_without_deep_copying_it(
    tiny_model, tiny_tokenizer, mixed_questions, monkeypatch
):
    # transformers' DynamicCache replaces its tensors when rows are selected, so each chunk takes its rows from the
    # one prompt cache: a deep copy per chunk (the whole cache: 41 GiB at 32 MedQA prompts on a 7B) must not happen.
    import copy

    import pipeline.evaluate.scoring as ev

    full = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=5, method="full")
    chunks = []
    real_rest = ev._score_choice_rest
    monkeypatch.setattr(ev, "_score_choice_rest", lambda *a, **k: chunks.append(1) or real_rest(*a, **k))

    def refuse(*args, **kwargs):
        raise AssertionError("the prompt cache was deep-copied")

    monkeypatch.setattr(copy, "deepcopy", refuse)
    shared = evaluate(tiny_model, tiny_tokenizer, mixed_questions, scoring="cloze", batch_size=3)
    batches = -(-len(mixed_questions) // 3)
    assert len(chunks) > batches  # several chunks per batch really ran
    assert all_scores(shared) == pytest.approx(all_scores(full), rel=1e-5, abs=1e-4)


def test_cache_rows_selects_rows_and_leaves_the_prompt_cache_whole(tiny_model):
    from pipeline.core.compat import returned_cache
    from pipeline.evaluate.scoring import _cache_rows

    out = tiny_model(input_ids=torch.tensor([[5, 6, 7], [8, 9, 10]]), use_cache=True)
    _, cache = returned_cache(out)
    before = [(layer.keys, layer.values) for layer in cache.layers]
    selected = _cache_rows(cache, torch.tensor([1, 1, 0]))
    for layer, (keys, values), chosen in zip(cache.layers, before, selected.layers, strict=True):
        assert layer.keys is keys and layer.values is values  # the prompt cache keeps its own tensors
        assert torch.equal(chosen.keys, keys[[1, 1, 0]]) and torch.equal(chosen.values, values[[1, 1, 0]])
    assert selected.layers is not cache.layers


def test_other_caches_are_deep_copied_before_rows_are_selected():
    from pipeline.evaluate.scoring import _cache_rows

    cache = NullCache()
    selected = _cache_rows(cache, torch.tensor([0, 0]))
    assert selected is not cache and cache.selected == [] and selected.selected == [[0, 0]]
