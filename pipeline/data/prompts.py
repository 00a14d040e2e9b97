"""Prompt text, targets and token-level encoding shared by training and evaluation.

The prompt is lm-evaluation-harness's ``medqa_4options`` ``doc_to_text`` (generalized to any number of options):

    Question: {question}
    A. {option A}
    ...
    Answer:

and the continuations follow lm-eval's ``multiple_choice`` requests: target delimiter " " + choice, so the letter
choices are " A".." E" and the cloze choices " " + option text. Keeping to this exactly is what makes our
accuracies comparable with published medqa_4options numbers.

Tokenization is lm-evaluation-harness's HF backend (``HFLM``), version 0.4.9.2 and later (0.4.13 is what the
parity test runs):

* ``encode_text`` is ``HFLM.tok_encode``: with ``add_bos="auto"`` (lm-eval's default, ``add_bos_token=None``) the
  tokenizer's own special tokens are used, so BOS appears exactly where the tokenizer adds it (LLaMA-2 and LLaMA-3
  tokenizers do; GPT-2, Pythia/GPT-NeoX and SmolLM2 ones do not), and a text that already starts with the BOS
  string gets none added. ``"always"`` is lm-eval's ``add_bos_token=True`` (BOS wherever the tokenizer has one),
  ``"never"`` its ``add_bos_token=False``, which was lm-eval's default up to 0.4.9.1 (changed in
  EleutherAI/lm-evaluation-harness PR #3347, "add_bos_token defaults to None").
* ``encode_pair`` is ``TemplateLM._encode_pair`` for causal models: trailing whitespace of the context moves to
  the continuation, the context is encoded alone, context + continuation is encoded, and the continuation's
  tokens are the whole text's tokens after the context's length. Tokenizing the continuation on its own would be
  wrong for SentencePiece tokenizers (LLaMA), which mark a string's first token as a word start.

Training uses the same two functions (``encode_example``), so the tokens a model is trained on are the tokens
evaluation scores, BOS included or not by the same rule.
"""

from __future__ import annotations

from typing import Any, Literal

from pipeline.core.errors import ExampleError
from pipeline.data.questions import Question

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and HF models) skip

AddBos = Literal["auto", "always", "never"]
ADD_BOS_CHOICES = ("auto", "always", "never")


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


def _check_add_bos(add_bos: str) -> None:
    if add_bos not in ADD_BOS_CHOICES:
        raise ValueError(f"add_bos must be one of {', '.join(ADD_BOS_CHOICES)}, got {add_bos!r}")


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _starts_with_prefix_token(tokenizer: Any, text: str) -> bool:
    # lm-eval's has_bos_prefix: its prefix token is BOS, or EOS where there is no BOS (HFLM.prefix_token_id).
    token = getattr(tokenizer, "bos_token", None) or getattr(tokenizer, "eos_token", None)
    return bool(token) and text.startswith(str(token))


def encode_text(tokenizer: Any, text: str, add_bos: AddBos = "auto") -> list[int]:
    """Token ids of ``text`` as lm-eval's ``HFLM.tok_encode`` makes them (see the module docstring for the rule)."""
    _check_add_bos(add_bos)
    if add_bos == "never":
        return _ids(tokenizer, text, add_special_tokens=False)
    if add_bos == "always":
        ids = _ids(tokenizer, text, add_special_tokens=False)
        bos = getattr(tokenizer, "bos_token_id", None)
        # lm-eval loads the tokenizer with add_bos_token=True; a text that starts with BOS already keeps one.
        if bos is None or _starts_with_prefix_token(tokenizer, text):
            return ids
        return [int(bos)] + ids
    return _ids(tokenizer, text, add_special_tokens=not _starts_with_prefix_token(tokenizer, text))


def bos_prefix(tokenizer: Any, add_bos: AddBos = "auto") -> list[int]:
    """The tokens ``encode_text`` puts before any text ([BOS] or []): truncation keeps them."""
    ids = encode_text(tokenizer, "Answer", add_bos)
    plain = _ids(tokenizer, "Answer", add_special_tokens=False)
    return ids[: len(ids) - len(plain)] if ids[len(ids) - len(plain):] == plain else []


def encode_pair(
    tokenizer: Any, context: str, continuation: str, add_bos: AddBos = "auto"
) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split as lm-eval's ``_encode_pair`` splits them for causal models.

    Trailing whitespace of the context moves to the continuation first, so "Answer: " + "A" and "Answer:" + " A"
    encode alike. The context's ids include BOS when ``encode_text`` adds one.
    """
    stripped = context.rstrip()
    if len(stripped) != len(context):
        continuation = context[len(stripped):] + continuation
        context = stripped
    whole_ids = encode_text(tokenizer, context + continuation, add_bos)
    context_ids = encode_text(tokenizer, context, add_bos)
    return context_ids, whole_ids[len(context_ids):]


def encode_example(
    tokenizer: Any, q: Question, target: Literal["letter", "text"], max_length: int, add_bos: AddBos = "auto"
) -> dict[str, list[int]]:
    """Training example: {"input_ids", "labels"} with labels -100 everywhere but the answer tokens and EOS.

    Loss only on the answer: the model should learn to answer, not to reproduce questions. If the example is
    longer than max_length the prompt loses tokens from its start (after BOS, if any), never the answer, because
    the options and "Answer:" at the end are what the answer depends on most; an answer that cannot fit is an error.
    """
    prompt_ids, answer_ids = encode_pair(tokenizer, format_prompt(q), target_text(q, target), add_bos)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        answer_ids = answer_ids + [int(eos)]
    keep_front = len(bos_prefix(tokenizer, add_bos))
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
