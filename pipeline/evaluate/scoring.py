"""Multiple-choice accuracy by log-likelihood, the way lm-evaluation-harness scores ``medqa_4options``.

Two scorings, both comparing the log-likelihood of each choice's tokens after the same prompt
(``pipeline.data.prompts.format_prompt``):

* ``letter``: the choices are " A".." E" (as many as the question has); the prediction is the argmax. This is
  lm-eval's medqa_4options (its ``acc``).
* ``cloze``: the choices are " " + each option's text. ``accuracy`` is the argmax of the summed log-likelihood;
  ``acc_norm`` is lm-eval's length normalization: the argmax of log-likelihood divided by the choice's length in
  characters (``len(choice)`` of the option text, without the leading space), which removes the bias towards
  short options.

How a batch is scored (``method="shared-prompt"``, the default): the prompts of up to ``batch_size`` questions
(and, with ``token_budget``, up to that many padded prompt tokens) run once, right-padded, with the KV cache on;
the first token of every choice is read from the prompt's last logits (for single-token letter choices that is the
whole score: one forward pass per batch of questions, no cache kept); then, in chunks of rows sorted by length,
the cache is gathered to one row per (question, choice) and only the remaining choice tokens run, with explicit
position ids so each choice continues exactly where its own prompt ended. Each chunk gathers its rows from the
one prompt cache without copying it (``_cache_rows``), and a batch's scores stay on the device until one copy
to the host at its end. Right padding cannot change a score: real tokens never attend to padding (mask) and keep
their positions; tests check that a question scores the same alone and next to longer neighbours, and that this
path equals the plain one-sequence-per-choice path (``method="full"``, also the fallback for models whose cache
cannot be gathered). Both work on transformers 4.57 and 5.x (``DynamicCache.batch_select_indices``, its
``DynamicLayer`` objects and tensor ``logits_to_keep`` are the same in both).

The model is evaluated in its own dtype; log-softmax is taken in float32.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch

from kit import atomic
from pipeline.core.compat import returned_cache as _returned_cache
from pipeline.core.errors import ExampleError
from pipeline.data.prompts import AddBos, bos_prefix, continuations, encode_pair, format_prompt
from pipeline.data.questions import Question

Scoring = Literal["letter", "cloze"]


@dataclass
class EvalResult:
    """``metrics``: accuracy, counts, per-meta_info breakdown; ``predictions``: one dict per question."""

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Item:
    context: list[int]  # prompt tokens (with BOS where the add_bos rule puts one)
    choices: list[list[int]]  # tokens of each continuation


def evaluate(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    *,
    scoring: Scoring,
    batch_size: int = 8,
    token_budget: int | None = None,
    limit: int | None = None,
    method: Literal["shared-prompt", "full"] = "shared-prompt",
    max_length: int | None = None,
    add_bos: AddBos = "auto",
) -> EvalResult:
    """Score every question (the first ``limit`` ones if given) and return metrics and per-question predictions.

    ``batch_size`` counts questions per forward pass (``method="full"``: sequences); ``token_budget`` (shared-prompt
    only) also caps a batch's padded prompt tokens, so short prompts run many to a pass and long ones few.
    ``max_length`` (default: the model's ``max_position_embeddings``) bounds prompt + choice; longer prompts lose
    tokens from their start, as lm-eval truncates. ``add_bos`` is the BOS rule of ``pipeline.data.prompts.encode_text``
    (train with the same one). The model's train/eval mode is restored afterwards, so this can run mid-training.
    """
    _check_arguments(scoring, method, batch_size, token_budget, add_bos)
    questions = list(questions)[:limit] if limit is not None else list(questions)
    if not questions:
        raise ValueError("no questions to evaluate")
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
    items = _encode_all(tokenizer, questions, scoring, max_length, add_bos)
    pad_id = _pad_id(tokenizer)

    # Longest prompts first and together: least padding, and an out-of-memory shows in the first batch.
    order = sorted(range(len(items)), key=lambda i: -len(items[i].context))
    scores: list[list[float] | None] = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if method == "full":
                _score_full(model, items, order, batch_size, pad_id, scores)
            else:
                for chunk in _prompt_batches(items, order, batch_size, token_budget):
                    batch_scores = _score_shared_prompt(model, [items[i] for i in chunk], pad_id)
                    if batch_scores is None:  # this model's cache cannot be gathered: score plainly
                        _score_full(model, items, chunk, batch_size, pad_id, scores)
                    else:
                        for i, s in zip(chunk, batch_scores, strict=False):
                            scores[i] = s
    finally:
        model.train(was_training)
    missing = [questions[i].source for i, s in enumerate(scores) if s is None]
    if missing:  # pragma: no cover - would be a bug in the batching above
        raise RuntimeError(f"no scores for {missing[:3]}")
    return _summarize(questions, [s for s in scores if s is not None], scoring)


def _check_arguments(scoring: str, method: str, batch_size: int, token_budget: int | None, add_bos: str) -> None:
    if scoring not in ("letter", "cloze"):
        raise ValueError(f"scoring must be 'letter' or 'cloze', got {scoring!r}")
    if method not in ("shared-prompt", "full"):
        raise ValueError(f"method must be 'shared-prompt' or 'full', got {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be at least 1 (or None), got {token_budget}")
    if add_bos not in ("auto", "always", "never"):
        raise ValueError(f"add_bos must be 'auto', 'always' or 'never', got {add_bos!r}")


def _encode_all(tokenizer: Any, questions: list[Question], scoring: Scoring, max_length: int,
                add_bos: AddBos) -> list[_Item]:
    """Every question's item, with the tokens ``encode_pair`` gives, from two batched tokenizer calls.

    ``encode_pair`` per choice encodes the prompt again for every choice (10 encodes of a ~600-token text per
    5-option question): 12-16 s for the 1273 MedQA questions on a 2-core CPU with the random model's tokenizer.
    Here each prompt is
    encoded once and all (prompt + choice) texts in one batch, which a fast tokenizer spreads over its threads.
    Tokenizers that cannot encode a list fall back to ``encode_pair``.
    """
    try:
        batched = _batched_pairs(tokenizer, questions, scoring, add_bos)
    except (TypeError, AttributeError, KeyError):
        batched = None
    if batched is None:
        return [_encode(tokenizer, q, scoring, max_length, add_bos) for q in questions]
    return [_item(q, context, choices, tokenizer, max_length, add_bos)
            for q, (context, choices) in zip(questions, batched, strict=True)]


def _batched_pairs(tokenizer: Any, questions: list[Question], scoring: Scoring,
                   add_bos: AddBos) -> list[tuple[list[int], list[list[int]]]]:
    # encode_pair's split, for all pairs at once: trailing whitespace of the prompt moves to the continuation.
    contexts, wholes, counts = [], [], []
    for q in questions:
        prompt = format_prompt(q)
        stripped = prompt.rstrip()
        texts = [prompt[len(stripped):] + text for text in continuations(q, scoring)]
        contexts.append(stripped)
        wholes += [stripped + text for text in texts]
        counts.append(len(texts))
    context_ids = _encode_texts(tokenizer, contexts, add_bos)
    whole_ids = _encode_texts(tokenizer, wholes, add_bos)
    out, at = [], 0
    for ctx, n in zip(context_ids, counts, strict=True):
        out.append((ctx, [ids[len(ctx):] for ids in whole_ids[at:at + n]]))
        at += n
    return out


def _encode_texts(tokenizer: Any, texts: list[str], add_bos: AddBos) -> list[list[int]]:
    """``encode_text`` for a list (same rule: lm-eval's prefix-token handling), in batched tokenizer calls."""
    from pipeline.data.prompts import _starts_with_prefix_token, encode_text

    if not texts:
        return []
    if add_bos == "never" or add_bos == "always":
        ids = [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        bos = getattr(tokenizer, "bos_token_id", None)
        if add_bos == "always" and bos is not None:
            ids = [x if _starts_with_prefix_token(tokenizer, t) else [int(bos)] + x
                   for t, x in zip(texts, ids, strict=True)]
        return ids
    plain = [i for i, t in enumerate(texts) if _starts_with_prefix_token(tokenizer, t)]
    if plain:  # rare (a text that starts with the BOS string): the one-text path keeps the rule in one place
        special = set(plain)
        rest = _encode_texts(tokenizer, [t for i, t in enumerate(texts) if i not in special], add_bos)
        it = iter(rest)
        return [encode_text(tokenizer, t, add_bos) if i in special else next(it) for i, t in enumerate(texts)]
    return [list(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def _item(q: Question, context: list[int], choices: list[list[int]], tokenizer: Any, max_length: int,
          add_bos: AddBos) -> _Item:
    if any(not choice for choice in choices):
        raise ExampleError(f"{q.source}: a choice encodes to no tokens, expected at least one")
    room = max_length - max(len(c) for c in choices)
    if len(context) > room:
        keep = len(bos_prefix(tokenizer, add_bos))
        if room <= keep:
            raise ExampleError(
                f"{q.source}: a choice alone fills max_length {max_length}, expected room for the prompt")
        context = context[:keep] + context[len(context) - (room - keep):]
    return _Item(context, choices)


def _encode(tokenizer: Any, q: Question, scoring: Scoring, max_length: int, add_bos: AddBos) -> _Item:
    prompt = format_prompt(q)
    context: list[int] = []
    choices = []
    for text in continuations(q, scoring):
        context, choice = encode_pair(tokenizer, prompt, text, add_bos)
        if not choice:
            raise ExampleError(f"{q.source}: choice {text!r} encodes to no tokens, expected at least one")
        choices.append(choice)
    return _item(q, context, choices, tokenizer, max_length, add_bos)  # the one truncation rule


def _pad_id(tokenizer: Any) -> int:
    # Any id works (padded positions are masked and never scored); prefer the real pad token for clarity.
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _device(model: Any) -> torch.device:
    # The input embedding's device, not next(parameters()): with a device map the layers may be spread out.
    return model.get_input_embeddings().weight.device


def _choice_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, in float32 whatever the model's dtype."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _prompt_batches(
    items: list[_Item], order: list[int], batch_size: int, token_budget: int | None
) -> Iterator[list[int]]:
    """Consecutive slices of ``order`` (longest prompt first): at most ``batch_size`` questions and, with a
    ``token_budget``, at most that many padded prompt tokens (questions x the first, longest prompt); never empty.

    A budget lets short prompts run in larger batches (fuller GPU) while long ones stay within memory: the prompt
    cache and each chunk's gathered cache are both at most the budget's tokens.
    """
    batch: list[int] = []
    for i in order:
        width = len(items[batch[0]].context) if batch else 0
        if batch and (len(batch) == batch_size or (token_budget and (len(batch) + 1) * width > token_budget)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token lists right-padded to the longest, built on the host in one go."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
    return ids, mask


def _score_shared_prompt(model: Any, batch: list[_Item], pad_id: int) -> list[list[float]] | None:
    """Scores of one batch with each prompt run once; None if the model's cache cannot be gathered by row."""
    device = _device(model)
    input_ids, attention_mask = _right_padded([item.context for item in batch], pad_id)
    last = [len(item.context) - 1 for item in batch]
    keep = sorted(set(last))
    need_rest = any(len(choice) > 1 for item in batch for choice in item.choices)
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "use_cache": need_rest}
    try:
        # Only the logits at each prompt's last position are needed; the full (batch, length, vocab) tensor would
        # be gigabytes for long MedQA prompts with a 32k vocabulary.
        out = model(**inputs, logits_to_keep=torch.tensor(keep, device=device))
    except TypeError as exc:  # an architecture without logits_to_keep: take all logits
        if "logits_to_keep" not in str(exc):
            raise
        out = model(**inputs)
    scores = _first_token_scores(out.logits, batch, [keep.index(p) if out.logits.shape[1] == len(keep) else p
                                                     for p in last])
    if need_rest:
        returned = _returned_cache(out)
        del out  # the logits are read: keep only the prompt cache alive while the choices run
        if returned is None or not hasattr(returned[1], "batch_select_indices"):
            return None
        _add_choice_rest(model, batch, scores, attention_mask, returned, pad_id)
    values = scores.tolist()  # the batch's one device-to-host copy (and sync)
    return [values[row][: len(item.choices)] for row, item in enumerate(batch)]


def _first_token_scores(logits: torch.Tensor, batch: list[_Item], columns: list[int]) -> torch.Tensor:
    """(questions, most choices) log p(each choice's first token | prompt) in float32, on the logits' device.

    ``columns[row]`` is the column of ``logits`` holding that row's last prompt position. Rows with fewer choices
    are padded with token 0; those entries are never read.
    """
    device = logits.device
    last = logits[torch.arange(len(batch), device=device), torch.tensor(columns, device=device)]
    logprobs = torch.log_softmax(last.float(), dim=-1)
    width = max(len(item.choices) for item in batch)
    first = torch.tensor([[c[0] for c in item.choices] + [0] * (width - len(item.choices)) for item in batch])
    return logprobs.gather(1, first.to(device))


def _add_choice_rest(
    model: Any, batch: list[_Item], scores: torch.Tensor, prompt_mask: torch.Tensor, returned: tuple[str, Any],
    pad_id: int,
) -> None:
    """Add the log-probabilities of the 2nd..last tokens of every multi-token choice to ``scores`` (in place)."""
    cache_name, prompt_cache = returned
    rows = [(b, c) for b, item in enumerate(batch) for c, choice in enumerate(item.choices) if len(choice) > 1]
    # Rows sorted by length and run in chunks of len(batch): one chunk of every row would pad each to the longest
    # choice of the batch (measured on MedQA: 3.6x the real choice tokens). A chunk's gathered cache then holds as
    # many rows as the prompt cache, and is freed (with its logits) when _score_choice_rest returns.
    rows.sort(key=lambda row: -len(batch[row[0]].choices[row[1]]))
    for start in range(0, len(rows), len(batch)):
        chunk = rows[start:start + len(batch)]
        logprobs = _score_choice_rest(model, batch, chunk, prompt_mask, prompt_cache, cache_name, pad_id)
        where = torch.tensor(chunk, device=scores.device)
        scores[where[:, 0], where[:, 1]] += logprobs.to(scores.device)  # (question, choice) pairs are distinct


def _cache_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A cache holding ``rows`` of ``cache`` (repeats allowed), leaving ``cache`` whole for the next chunk.

    transformers' ``DynamicCache`` (the same in 4.57 and 5.x: a ``layers`` list of ``DynamicLayer``) *replaces* a
    layer's keys/values tensors in both ``batch_select_indices`` (indexing) and ``update`` (``torch.cat``), never
    writes into them: a shallow copy of the cache and of each layer object is enough, and only the selected rows
    are new memory. Any other cache (static, sliding, offloaded, quantized, a model's own) is deep-copied first:
    still right, but it copies the whole prompt cache for every chunk.
    """
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None)
    if (type(cache) is DynamicCache and not getattr(cache, "offloading", False) and isinstance(layers, list)
            and all(type(layer) is DynamicLayer for layer in layers)):
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in layers]  # a new list: update() may append to it
    else:
        selected = copy.deepcopy(cache)
    selected.batch_select_indices(rows)
    return selected


def _score_choice_rest(
    model: Any,
    batch: list[_Item],
    rows: list[tuple[int, int]],
    prompt_mask: torch.Tensor,
    prompt_cache: Any,
    cache_name: str,
    pad_id: int,
) -> torch.Tensor:
    """Summed log-probabilities of the 2nd..last tokens of the given (question, choice) rows, on the device."""
    device = _device(model)
    gather = torch.tensor([b for b, _ in rows])
    choices = [batch[b].choices[c] for b, c in rows]
    ids, choice_mask = _right_padded([choice[:-1] for choice in choices], pad_id)
    targets, _ = _right_padded([choice[1:] for choice in choices], 0)
    # Continue from the prompt's own end, not from the padded width: positions match the unpadded sequence.
    starts = torch.tensor([len(batch[b].context) for b, _ in rows])
    position_ids = starts[:, None] + torch.arange(ids.shape[1])
    out = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([prompt_mask[gather], choice_mask], dim=1).to(device),
        position_ids=position_ids.to(device),
        use_cache=True,
        **{cache_name: _cache_rows(prompt_cache, gather.to(device))},
    )
    mask = choice_mask.to(out.logits.device)
    return (_choice_logprobs(out.logits, targets.to(out.logits.device)) * mask).sum(dim=1)


def _score_full(
    model: Any, items: list[_Item], which: list[int], batch_size: int, pad_id: int, scores: list[Any]
) -> None:
    """Reference path: every (prompt + choice) is its own right-padded sequence, ``batch_size`` sequences a pass."""
    device = _device(model)
    rows = [(i, c) for i in which for c in range(len(items[i].choices))]
    results: dict[tuple[int, int], float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        seqs = [items[i].context + items[i].choices[c] for i, c in chunk]
        ids, mask = _right_padded([seq[:-1] for seq in seqs], pad_id)
        targets, _ = _right_padded([seq[1:] for seq in seqs], 0)
        scored = torch.zeros(ids.shape, dtype=torch.bool)
        for r, ((i, _c), seq) in enumerate(zip(chunk, seqs, strict=True)):
            scored[r, len(items[i].context) - 1 : len(seq) - 1] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        logprobs = _choice_logprobs(logits, targets.to(logits.device)).cpu()
        for r, key in enumerate(chunk):
            results[key] = float(logprobs[r][scored[r]].sum())
    for i in which:
        scores[i] = [results[(i, c)] for c in range(len(items[i].choices))]


def _argmax(values: list[float]) -> int:
    """Index of the largest value, the first one on ties (as numpy.argmax, which lm-eval uses)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def _summarize(questions: list[Question], scores: list[list[float]], scoring: Scoring) -> EvalResult:
    predictions = []
    for index, (q, s) in enumerate(zip(questions, scores, strict=False)):
        letters = list(q.options)
        pred = _argmax(s)
        entry: dict[str, Any] = {
            "index": index,
            "source": q.source,
            "meta_info": q.meta_info,
            "gold": q.answer_idx,
            "predicted": letters[pred],
            "correct": pred == q.gold,
            "scores": {letter: value for letter, value in zip(letters, s, strict=False)},
        }
        if scoring == "cloze":
            normed = [value / len(text) for value, text in zip(s, q.options.values(), strict=False)]
            entry["predicted_norm"] = letters[_argmax(normed)]
            entry["correct_norm"] = entry["predicted_norm"] == q.answer_idx
        predictions.append(entry)

    def tally(rows: list[dict[str, Any]], options: list[int]) -> dict[str, Any]:
        correct = sum(r["correct"] for r in rows)
        summary: dict[str, Any] = {"count": len(rows), "correct": correct, "accuracy": correct / len(rows)}
        if scoring == "cloze":
            correct_norm = sum(r["correct_norm"] for r in rows)
            summary["correct_norm"] = correct_norm
            summary["acc_norm"] = correct_norm / len(rows)
        # Expected accuracy of guessing: the bar that "learned something" must clear.
        summary["chance_accuracy"] = sum(1.0 / n for n in options) / len(options)
        return summary

    metrics = {"scoring": scoring, **tally(predictions, [len(q.options) for q in questions])}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        if q.meta_info is not None:
            groups[q.meta_info].append(i)
    metrics["by_meta_info"] = {
        name: tally([predictions[i] for i in idx], [len(questions[i].options) for i in idx])
        for name, idx in sorted(groups.items())
    }
    return EvalResult(metrics, predictions)


def write_eval(result: EvalResult, out_dir: Path) -> None:
    """Write ``predictions.jsonl`` and ``metrics.json`` into ``out_dir``, each atomically (temp file + rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
    atomic.write_text(out_dir / "predictions.jsonl", lines)
    atomic.write_text(out_dir / "metrics.json", json.dumps(result.metrics, indent=2, ensure_ascii=False) + "\n")


