"""Tiny tokenizers of each BOS family, trained locally in about a second, and tiny random Llamas that use them.

The families differ exactly where lm-eval's encoding rule and ours could part (BOS handling); their BPE merges
are learned from pipeline.model.tiny's small clinical corpus, so MedQA text encodes to many short tokens:

- ``llama``: SentencePiece-style (``▁`` word marks, byte fallback), ``LlamaTokenizerFast`` that adds ``<s>`` itself;
- ``bytelevel-bos``: byte-level BPE whose post-processor adds ``<|begin_of_text|>`` (LLaMA-3 style);
- ``gpt2``: byte-level BPE, ``GPT2TokenizerFast`` with bos == eos == ``<|endoftext|>``, adds nothing (GPT-2,
  Pythia, SmolLM2 behave like this);
- ``no-bos``: byte-level BPE with an EOS but no BOS token at all (Qwen2 style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

FAMILIES = ("llama", "bytelevel-bos", "gpt2", "no-bos")


def _corpus(texts: Sequence[str]) -> list[str]:
    from pipeline.model.tiny import _CORPUS

    return [_CORPUS] * 4 + list(texts)


def _byte_level_bpe(specials: list[str], texts: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(texts), trainer=trainer)
    return tok


def _sentencepiece_bpe(texts: Sequence[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # As LLaMA-2's tokenizer.json: spaces become "▁" and the first word gets one too (Metaspace, prepend "first"),
    # characters outside the vocabulary fall back to <0xNN> byte tokens. Split at "▁" as SentencePiece training does.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False, initial_alphabet=[f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator(_corpus(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return tok


def build_tokenizer(family: str, texts: Sequence[str] = (), vocab_size: int = 400) -> Any:
    """A transformers tokenizer of ``family`` (one of FAMILIES), its BPE trained on the tiny corpus plus ``texts``.

    Extra texts (MedQA questions) with a larger vocabulary give realistic token lengths: the parity test's
    sequences are then ~5x shorter than with the tiny corpus alone.
    """
    from tokenizers import processors
    from transformers import GPT2TokenizerFast, LlamaTokenizerFast, PreTrainedTokenizerFast

    if family == "llama":
        return LlamaTokenizerFast(tokenizer_object=_sentencepiece_bpe(texts, vocab_size), bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", add_bos_token=True, add_eos_token=False)
    if family == "bytelevel-bos":
        tok = _byte_level_bpe(["<|begin_of_text|>", "<|end_of_text|>"], texts, vocab_size)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                          special_tokens=[("<|begin_of_text|>", bos)]),
        ])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                       eos_token="<|end_of_text|>")
    if family == "gpt2":
        tok = _byte_level_bpe(["<|endoftext|>"], texts, vocab_size)
        return GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>")
    if family == "no-bos":
        return PreTrainedTokenizerFast(tokenizer_object=_byte_level_bpe(["<|endoftext|>"], texts, vocab_size),
                                       eos_token="<|endoftext|>")
    raise ValueError(f"unknown tokenizer family {family!r}, expected one of {FAMILIES}")


def build_family_model(family: str, out_dir: Path, texts: Sequence[str] = (), vocab_size: int = 400,
                       seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM with ``family``'s tokenizer, saved into ``out_dir`` (loadable by AutoClasses)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(family, texts, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        # Longer than any MedQA prompt in these tokenizers' short tokens: no truncation on either side.
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        # Weights 10x larger than the default 0.02: with the default, a random model gives nearly the same letter
        # for every question, and identical predictions would prove little; with 0.2 all four letters occur.
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
