"""Synthetic models with random weights: the tiny Llama for tests and the device smoke check, and the
``random:<preset>`` LLaMA-shaped models for GPU memory/throughput smoke runs. All of them live here, none in model.py.

No hub access is needed: the tokenizer is a byte-level BPE trained in about a second on a built-in clinical
corpus, so any text encodes (no unknown tokens), and the models have the real Llama architecture with random
weights, so every code path (4-bit layers, LoRA targets, attention backends) is the one a 7B run takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit import atomic
from pipeline.core.compat import plain_tokenizer_class
from pipeline.core.errors import RecipeError
from pipeline.model import smollm2

RANDOM_PREFIX = "random:"
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"

# LLaMA-2-7B's shape (Meta's config.json for Llama-2-7b-hf), for GPU smoke runs without downloading weights.
RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
    # Meta's config.json for Llama-2-13b-hf and Llama-2-70b-hf (70B: grouped-query attention, 8 KV heads).
    "llama2-13b": dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
    "llama2-70b": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    ),
}

_CORPUS = """
Question: A 45-year-old man presents with chest pain radiating to the left arm. Which of the following is the
most appropriate next step in management?
A. Aspirin
B. Lisinopril
C. Metoprolol
D. Atorvastatin
E. Nitroglycerin
Answer: A
Which drug class does lisinopril belong to? ACE inhibitor. Losartan is an angiotensin receptor blocker.
Metformin is a biguanide. Atorvastatin is a statin. Amoxicillin is a penicillin antibiotic.
A 23-year-old woman comes to the physician because of fever, dysuria and flank pain for two days.
The patient is treated with ceftriaxone. Streptococcus pneumoniae, Staphylococcus aureus, Escherichia coli.
The most likely diagnosis is pyelonephritis. Laboratory studies show leukocytosis.
0 1 2 3 4 5 6 7 8 9 mg kg mL dL mmol L % ? , . ; : ( ) - / '
"""


def train_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with bos/eos/pad tokens, trained on the corpus above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_tiny_model(
    out_dir: Path,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny random ``LlamaForCausalLM`` and its tokenizer into ``out_dir`` (atomically) and return it.

    The same seed gives the same weights, so tests that compare two runs start from the same model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = train_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # One rename into place (kit/atomic.py). Two processes building the same folder write identical files (same
    # seed), so whichever rename lands last is as good as the first.
    with atomic.folder(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        plain_tokenizer_class(tmp)  # the images run transformers 4.57 (see pipeline/core/compat.py)
    return out_dir


def is_random(resolved_path: str) -> bool:
    """True for a folder built by ``build_random_model`` (its marker file says the weights are random)."""
    return (Path(resolved_path) / RANDOM_MARKER).is_file()


def parse_random_spec(spec: str) -> dict[str, Any]:
    """``random:llama2-7b`` or ``random:llama2-7b:num_hidden_layers=2,hidden_size=256,...`` -> LlamaConfig kwargs.

    The overrides let the CPU tests run the very same path with a scaled-down shape.
    """
    body = spec[len(RANDOM_PREFIX):]
    preset, _, extra = body.partition(":")
    if preset not in RANDOM_PRESETS:
        raise RecipeError(f"model {spec!r}: unknown random preset {preset!r}, expected one of {sorted(RANDOM_PRESETS)}")
    shape = dict(RANDOM_PRESETS[preset])
    for item in filter(None, (p.strip() for p in extra.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in shape:
            raise RecipeError(f"model {spec!r}: override {item!r} must be one of {sorted(shape)}=<integer>")
        shape[key] = float(value) if key == "rms_norm_eps" else int(value)
    return shape


def build_random_model(spec: str, seed: int = 0, *, tokenizer: Any = None, out_dir: Path | None = None) -> Path:
    """Save a LLaMA-shaped model with RANDOM weights (bf16) and a small local tokenizer into the cache, once.

    For smoke runs of the full 7B memory and throughput path without downloading weights. A marker file makes
    ``ModelInfo.random_weights`` true, so the report can never pass such a run off as a real model.

    ``tokenizer`` replaces the toy BPE (its MedQA prompts average 584 tokens, 2.3x the 257 of the MedQA BPE), e.g. the
    benchmarks' MedQA BPE; such a model needs its own ``out_dir``, so it never takes the cache folder of the spec.
    """
    if tokenizer is not None and out_dir is None:
        raise ValueError("build_random_model: a model with its own tokenizer needs out_dir=")
    shape = parse_random_spec(spec)
    name = "random-" + spec[len(RANDOM_PREFIX):].replace(":", "-").replace(",", "-").replace("=", "")
    dest = Path(out_dir) if out_dir is not None else smollm2.cache_dir() / "models" / f"{name}-seed{seed}"
    if (dest / RANDOM_MARKER).is_file():
        return dest  # before torch and transformers' model code are imported: resolving a built model stays cheap
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(512)
    if len(tokenizer) > shape["vocab_size"]:
        raise RecipeError(f"model {spec!r}: vocab_size {shape['vocab_size']} is smaller than its tokenizer's "
                          f"{len(tokenizer)} tokens, expected at least that many embedding rows")
    config = LlamaConfig(
        **shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    # Built on the GPU when there is one: initializing 6.7 B parameters on a CPU takes minutes.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    with atomic.folder(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        plain_tokenizer_class(tmp)
        (tmp / RANDOM_MARKER).write_text(
            f"RANDOM weights in the shape {spec} (seed {seed}), tokenizer of {len(tokenizer)} tokens; for "
            "memory/throughput smoke runs only.\n"
        )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the 13.5 GB back before the 4-bit load needs it
    return dest
