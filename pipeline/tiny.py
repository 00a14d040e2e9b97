"""Tiny random Llama models with a locally trained tokenizer, for tests and the device smoke check.

No hub access is needed: the tokenizer is a byte-level BPE trained in about a second on a built-in clinical
corpus, so any text encodes (no unknown tokens), and the model has the real Llama architecture with random
weights, so every code path (4-bit layers, LoRA targets, attention backends) is the one a 7B run takes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # transformers 5.x records "TokenizersBackend" as the class, which 4.57's AutoTokenizer cannot load; the plain
    # fast tokenizer class loads in both, and the images run 4.57.
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    try:
        os.replace(tmp, out_dir)
    except OSError:
        # Another process built the same folder first; theirs is identical (same seed), keep it.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if not (out_dir / "config.json").exists():
            raise
    return out_dir
