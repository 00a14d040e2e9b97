"""Rows too long for the token budget, named by file:line with what will be cut.

Training keeps at most ``data.max_length`` tokens per example and evaluation at most the model's context; both
cut the prompt's start and keep the answer (pipeline/data/prompts.py, pipeline/evaluate/scoring.py). A 2 MB question was
silently cut to its last thousand tokens; now each such row is reported before training, in both files.

Only rows whose UTF-8 size could exceed the budget are tokenized: byte-level BPE and SentencePiece with byte
fallback never make more tokens than bytes (plus a few special tokens), so the common case costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from kit import atomic
from pipeline.data.prompts import continuations, encode_example, encode_pair, format_prompt
from pipeline.data.questions import Question

_SPECIAL_TOKENS = 8  # BOS, EOS, a SentencePiece leading space: generous
_UNBOUNDED = 10**9


def _could_exceed(q: Question, budget: int) -> bool:
    size = len(format_prompt(q).encode()) + max(len(t.encode()) for t in q.options.values())
    return size + _SPECIAL_TOKENS > budget


def train_rows_over(questions: Sequence[Question], tokenizer: Any, target: str, max_length: int) -> list[str]:
    """One message per training row longer than ``data.max_length`` tokens."""
    messages = []
    for q in questions:
        if not _could_exceed(q, max_length):
            continue
        n = len(encode_example(tokenizer, q, target, _UNBOUNDED)["input_ids"])
        if n > max_length:
            messages.append(f"{q.source}: {n} tokens, over data.max_length {max_length}: the first {n - max_length} "
                            "prompt tokens will be cut for training (the answer is kept)")
    return messages


def eval_rows_over(questions: Sequence[Question], tokenizer: Any, scoring: str, max_length: int) -> list[str]:
    """One message per evaluation row whose prompt + longest choice exceed ``max_length`` (the model's context)."""
    messages = []
    for q in questions:
        if not _could_exceed(q, max_length):
            continue
        # The longest option by bytes stands for all: a 2 MB prompt tokenized once, not once per option.
        longest = max(continuations(q, scoring), key=lambda text: len(text.encode()))
        n = sum(map(len, encode_pair(tokenizer, format_prompt(q), longest)))
        if n > max_length:
            messages.append(f"{q.source}: {n} tokens with its longest option, over the {max_length}-token context "
                            f"used for evaluation: the first {n - max_length} prompt tokens will be cut (as lm-eval "
                            "does)")
    return messages


def summarize(messages: list[str], limit: int = 10, full_list: Optional[Path] = None,
              hint: str = "") -> list[str]:
    """The first ``limit`` messages and a count of the rest; all of them written to ``full_list`` (atomically)
    when there are more, so a long list is one line on screen and still complete somewhere."""
    if len(messages) <= limit:
        return list(messages)
    where = ""
    if full_list is not None:
        atomic.write_text(full_list, "\n".join(messages) + "\n")
        where = f"; all {len(messages)} in {full_list}"
    return messages[:limit] + [f"... and {len(messages) - limit} more such rows{where}{hint}"]
