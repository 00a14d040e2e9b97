"""Prompt text, targets and token-level encoding shared by training and evaluation.

The prompt is lm-evaluation-harness's ``medqa_4options`` ``doc_to_text`` (generalized to any number of options):

    Question: {question}
    A. {option A}
    ...
    Answer:

and the continuations follow lm-eval's ``multiple_choice`` requests: target delimiter " " + choice, so the letter
choices are " A".." E" and the cloze choices " " + option text. Keeping to this exactly is what makes our
accuracies comparable with published medqa_4options numbers.

Tokenization at the prompt/answer boundary is done the way lm-eval's ``loglikelihood`` does it: the context is
tokenized alone, the whole text (context + continuation) is tokenized, and the continuation's tokens are the whole
text's tokens after the context's length. Tokenizing the continuation on its own would be wrong for SentencePiece
tokenizers (LLaMA), which add a word-start marker to a string's first token. Training uses the same function,
so the tokens a model is trained to produce are the tokens evaluation scores.
"""

from __future__ import annotations

from typing import Any, Literal

from pipeline.data import Question
from pipeline.errors import ExampleError

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and HF models) skip


def format_prompt(q: Question) -> str:
    """lm-eval medqa_4options prompt: "Question: ...\\nA. ...\\n...\\nAnswer:" (no trailing space)."""
    lines = "".join(f"{letter}. {text}\n" for letter, text in q.options.items())
    return f"Question: {q.question}\n{lines}Answer:"


def target_text(q: Question, target: Literal["letter", "text"]) -> str:
    """The training target after the prompt: " C" (letter) or " " + the answer's text (text)."""
    if target == "letter":
        return " " + q.answer_idx
    if target == "text":
        return " " + q.answer
    raise ValueError(f"target must be 'letter' or 'text', got {target!r}")


def continuations(q: Question, scoring: Literal["letter", "cloze"]) -> list[str]:
    """The strings whose log-likelihood after the prompt is compared: " A".." E" or " " + each option's text."""
    if scoring == "letter":
        return [" " + letter for letter in q.options]
    if scoring == "cloze":
        return [" " + text for text in q.options.values()]
    raise ValueError(f"scoring must be 'letter' or 'cloze', got {scoring!r}")


def bos_prefix(tokenizer: Any) -> list[int]:
    """[bos_token_id] when the tokenizer has a BOS token, else [].

    Text is always encoded with add_special_tokens=False and this prefix added by hand: some tokenizers add BOS
    themselves (LLaMA-2, which expects it), some never do (our tiny test tokenizer, GPT-2 style ones), and some
    append EOS too; doing it ourselves gives one rule for all, and the same tokens in training and evaluation.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    return [] if bos is None else [int(bos)]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (BOS + context, continuation), split the way lm-eval's loglikelihood splits them.

    Trailing whitespace of the context moves to the continuation first (lm-eval does the same), so "Answer: " +
    "A" and "Answer:" + " A" encode alike.
    """
    stripped = context.rstrip()
    if len(stripped) != len(context):
        continuation = context[len(stripped):] + continuation
        context = stripped
    context_ids = _encode(tokenizer, context)
    whole_ids = _encode(tokenizer, context + continuation)
    return bos_prefix(tokenizer) + context_ids, whole_ids[len(context_ids):]


def encode_example(
    tokenizer: Any, q: Question, target: Literal["letter", "text"], max_length: int
) -> dict[str, list[int]]:
    """Training example: {"input_ids", "labels"} with labels -100 everywhere but the answer tokens and EOS.

    Loss only on the answer: the model should learn to answer, not to reproduce questions. If the example is
    longer than max_length the prompt loses tokens from its start (after BOS), never the answer, because the
    options and "Answer:" at the end are what the answer depends on most; an answer that cannot fit is an error.
    """
    prompt_ids, answer_ids = encode_pair(tokenizer, format_prompt(q), target_text(q, target))
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        answer_ids = answer_ids + [int(eos)]
    keep_front = len(bos_prefix(tokenizer))
    room = max_length - len(answer_ids) - keep_front
    if room < 1:
        raise ExampleError(
            f"{q.source}: the answer alone is {len(answer_ids)} tokens (with EOS), expected it to fit max_length "
            f"{max_length} with at least one prompt token; raise data.max_length"
        )
    if len(prompt_ids) + len(answer_ids) > max_length:
        prompt_ids = prompt_ids[:keep_front] + prompt_ids[len(prompt_ids) - room:]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }
