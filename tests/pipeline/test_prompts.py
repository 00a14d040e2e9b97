"""Prompt format (lm-eval medqa_4options), targets, and the token-level prompt/answer boundary and label mask."""

from __future__ import annotations

import pytest

from pipeline.data.prompts import (
    IGNORE_INDEX,
    bos_prefix,
    continuations,
    encode_example,
    encode_pair,
    encode_text,
    format_prompt,
    target_text,
)
from pipeline.data.questions import Question, load_questions

Q4 = Question(
    "A 60-year-old man takes lisinopril. Which class is it?",
    {"A": "Statin", "B": "ACE inhibitor", "C": "Beta blocker", "D": "Macrolide"},
    "B",
    "step1",
    "test:1",
)
Q5 = Question("Q?", {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}, "E", None, "test:2")


def test_prompt_is_exactly_lm_eval_medqa_4options():
    # lm-eval's doc_to_text: f"Question: {sent1}\n" + "".join(f"{k}. {v}\n") + "Answer:"
    assert format_prompt(Q4) == (
        "Question: A 60-year-old man takes lisinopril. Which class is it?\n"
        "A. Statin\nB. ACE inhibitor\nC. Beta blocker\nD. Macrolide\nAnswer:"
    )
    assert format_prompt(Q5) == "Question: Q?\nA. a\nB. b\nC. c\nD. d\nE. e\nAnswer:"


def test_targets_and_continuations_use_lm_eval_space_delimiter():
    assert target_text(Q4, "letter") == " B"
    assert target_text(Q4, "text") == " ACE inhibitor"
    assert continuations(Q5, "letter") == [" A", " B", " C", " D", " E"]
    assert continuations(Q4, "cloze") == [" Statin", " ACE inhibitor", " Beta blocker", " Macrolide"]
    with pytest.raises(ValueError, match="target must be 'letter' or 'text'"):
        target_text(Q4, "cloze")
    with pytest.raises(ValueError, match="scoring must be 'letter' or 'cloze'"):
        continuations(Q4, "text")


@pytest.mark.parametrize("target,expected", [("letter", " B</s>"), ("text", " ACE inhibitor</s>")])
def test_only_answer_tokens_and_eos_are_labelled(tiny_tokenizer, target, expected):
    example = encode_example(tiny_tokenizer, Q4, target, max_length=512)
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels)
    labelled = [i for i, label in zip(ids, labels, strict=False) if label != IGNORE_INDEX]
    assert tiny_tokenizer.decode(labelled) == expected
    # Labels equal inputs where set (the model shifts them itself), and form one block at the end.
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert labels[first:] == ids[first:]
    assert all(label == IGNORE_INDEX for label in labels[:first])
    # The tiny tokenizer defines <s> but does not add it itself: with the default rule (lm-eval's) no BOS, just
    # exactly the prompt.
    assert tiny_tokenizer.decode(ids[:first]) == format_prompt(Q4)


def test_boundary_is_exact_on_every_demo_question(tiny_tokenizer, demo_data_paths):
    # The split must not cut through a token: prompt tokens + answer tokens == tokens of (prompt + answer).
    for q in load_questions(demo_data_paths[0])[:100]:
        for text in continuations(q, "cloze") + continuations(q, "letter"):
            context, choice = encode_pair(tiny_tokenizer, format_prompt(q), text)
            whole = tiny_tokenizer(format_prompt(q) + text, add_special_tokens=False)["input_ids"]
            assert context + choice == whole
            assert tiny_tokenizer.decode(choice) == text


def test_trailing_space_of_context_moves_to_the_continuation(tiny_tokenizer):
    assert encode_pair(tiny_tokenizer, "Answer: ", "B") == encode_pair(tiny_tokenizer, "Answer:", " B")


def test_long_prompt_is_truncated_from_the_start_keeping_bos_and_answer(tiny_tokenizer):
    full = encode_example(tiny_tokenizer, Q4, "text", max_length=512, add_bos="always")
    cut = encode_example(tiny_tokenizer, Q4, "text", max_length=20, add_bos="always")
    assert len(cut["input_ids"]) == 20
    assert cut["input_ids"][0] == tiny_tokenizer.bos_token_id
    assert cut["input_ids"][1:] == full["input_ids"][-19:]  # the end of the prompt ("...Answer:") and the answer
    assert cut["labels"][-6:] == full["labels"][-6:]
    assert tiny_tokenizer.decode([i for i, l in zip(cut["input_ids"], cut["labels"], strict=False) if l != IGNORE_INDEX]) == (
        " ACE inhibitor</s>"
    )


def test_answer_that_cannot_fit_is_an_error_naming_the_source(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"^test:1: the answer alone is \d+ tokens \(with EOS\), expected it to fit "
                                         r"max_length 4 with at least one prompt token"):
        encode_example(tiny_tokenizer, Q4, "text", max_length=4)


class CharTokenizer:
    """One token per character, no BOS/EOS: the rule for tokenizers without special tokens."""

    bos_token_id = None
    eos_token_id = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_tokenizer_without_bos_or_eos_gets_neither():
    tok = CharTokenizer()
    assert bos_prefix(tok) == []
    example = encode_example(tok, Q4, "letter", max_length=512)
    assert example["input_ids"] == [ord(c) for c in format_prompt(Q4) + " B"]
    assert [l for l in example["labels"] if l != IGNORE_INDEX] == [ord(" "), ord("B")]


# --------------------------------------------------------------------------------------------------------------
# The BOS rule (lm-eval's HFLM.tok_encode) on each tokenizer family; the parity test checks it against lm-eval.

from .tokenizer_families import build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def families():
    return {name: build_tokenizer(name) for name in ("llama", "bytelevel-bos", "gpt2", "no-bos")}


@pytest.mark.parametrize("family,auto_has_bos", [("llama", True), ("bytelevel-bos", True), ("gpt2", False),
                                                 ("no-bos", False)])
def test_auto_puts_bos_exactly_where_the_tokenizer_adds_it(families, family, auto_has_bos):
    tok = families[family]
    plain = tok(format_prompt(Q4), add_special_tokens=False)["input_ids"]
    context, _ = encode_pair(tok, format_prompt(Q4), " B", add_bos="auto")
    assert context == ([tok.bos_token_id] if auto_has_bos else []) + plain
    assert encode_pair(tok, format_prompt(Q4), " B", add_bos="never")[0] == plain
    # always: BOS wherever the tokenizer has one, never twice (llama and bytelevel-bos add it themselves too).
    always = encode_pair(tok, format_prompt(Q4), " B", add_bos="always")[0]
    assert always == ([] if tok.bos_token_id is None else [tok.bos_token_id]) + plain


@pytest.mark.parametrize("family", ["llama", "bytelevel-bos", "gpt2", "no-bos"])
@pytest.mark.parametrize("add_bos", ["auto", "always", "never"])
def test_training_and_evaluation_encode_the_prompt_alike(families, family, add_bos):
    from pipeline.evaluate.scoring import _encode

    tok = families[family]
    example = encode_example(tok, Q4, "letter", max_length=512, add_bos=add_bos)
    prompt_len = example["labels"].index(next(l for l in example["labels"] if l != IGNORE_INDEX))
    item = _encode(tok, Q4, "letter", 512, add_bos)
    assert example["input_ids"][:prompt_len] == item.context
    assert example["input_ids"][prompt_len:-1] == item.choices[Q4.gold]  # the trained answer is a scored choice


def test_text_that_starts_with_bos_gets_no_second_one(families):
    tok = families["llama"]
    ids = encode_text(tok, "<s>Question: x", add_bos="auto")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert encode_text(tok, "<s>Question: x", add_bos="always") == ids


def test_unknown_add_bos_is_an_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="add_bos must be one of auto, always, never, got 'yes'"):
        encode_text(tiny_tokenizer, "x", add_bos="yes")
