"""A stand-in for LLaMA's tokenizer on MedQA, for the benchmarks in this folder (there is no hub access here).

A byte-level BPE trained on the questions' own prompts (``pipeline.data.prompts.format_prompt``), so sequence lengths
are real MedQA lengths and any text encodes. Tokens per word depend on the vocabulary: on the 1273-question test
split, 3000 gives 1.78 (mean prompt 257 tokens), 8000 gives 1.49 (215), 32000 stops at 24336 learned tokens
and gives 1.34 (193). Special tokens come first, as in ``pipeline.model.tiny``'s tokenizer: <pad> 0, <s> 1, </s> 2, so
the ids the random models' configs name (pad, bos, eos) mean the same tokens.
"""

from __future__ import annotations

from typing import Any, Sequence


def medqa_tokenizer(questions: Sequence[Any], vocab_size: int) -> Any:
    """Byte-level BPE ``PreTrainedTokenizerFast`` of at most ``vocab_size`` tokens trained on the questions' prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pipeline.data.prompts import format_prompt

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([format_prompt(q) for q in questions], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
