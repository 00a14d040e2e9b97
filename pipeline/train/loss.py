"""The training loss: cross-entropy over the answer tokens only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pipeline.data.prompts import IGNORE_INDEX


class AnswerLoss(torch.nn.Module):
    """Summed cross-entropy over the answer tokens, and their count.

    The output layer runs only at the positions whose next token is an answer token (labels != -100): with a
    49k vocabulary and ~100-token prompts, full logits cost as much as the rest of a small model's step. The
    decoder and head are the base model's own modules (LoRA lives inside them), so DDP wraps this module.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        logits = base.get_output_embeddings()(hidden[:, :-1][mask]).float()
        return F.cross_entropy(logits, targets[mask], reduction="sum"), mask.sum()


def mean_answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    loss_sum, count = AnswerLoss(model)(**batch)
    return loss_sum / count.clamp(min=1)
