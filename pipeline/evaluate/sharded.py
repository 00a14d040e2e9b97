"""Evaluation over all ranks of a torchrun job: each rank scores its share, rank 0 gathers and writes."""

from __future__ import annotations

from typing import Any, Sequence

from pipeline.evaluate.scoring import _summarize, evaluate
from pipeline.train.distributed import Dist, shard


def evaluate_sharded(model: Any, tokenizer: Any, questions: Sequence[Any], dist: Dist, **kwargs: Any) -> Any:
    """``pipeline.evaluate.scoring.evaluate`` over all ranks: each scores its shard, rank 0 gets the whole result.

    Scores are per question (a question's score never depends on its batch neighbours: evaluate's tests), so the
    gathered scores, put back in file order and summarized once, are exactly one process's result. Ranks other
    than 0 get None. ``limit`` is applied before sharding, as one process would.
    """
    limit = kwargs.pop("limit", None)
    questions = list(questions)[:limit] if limit is not None else list(questions)
    if not dist.enabled:
        return evaluate(model, tokenizer, questions, **kwargs)
    mine = shard(len(questions), dist)
    scores = []
    if mine:
        result = evaluate(model, tokenizer, [questions[i] for i in mine], **kwargs)
        scores = [list(p["scores"].values()) for p in result.predictions]
    gathered = dist.gather_objects((mine, scores))
    if not dist.main:
        return None
    by_index: dict[int, list[float]] = {}
    for indices, rank_scores in gathered:
        by_index.update(zip(indices, rank_scores, strict=True))
    return _summarize(questions, [by_index[i] for i in range(len(questions))], kwargs["scoring"])
