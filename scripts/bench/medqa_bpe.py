"""A stand-in for LLaMA's tokenizer on MedQA, for the benchmarks in this folder (there is no hub access here).

A byte-level BPE trained on the questions' own prompts (``pipeline.data.prompts.format_prompt``), so sequence lengths
are real MedQA lengths and any text encodes. Tokens per word depend on the vocabulary: on the 1273-question test
split, 3000 gives 1.78 (mean prompt 257 tokens), 8000 gives 1.49 (215), 32000 stops at 24336 learned tokens
and gives 1.34 (193). Special tokens come first, as in ``pipeline.model.tiny``'s tokenizer: <pad> 0, <s> 1, </s> 2, so
the ids the random models' configs name (pad, bos, eos) mean the same tokens.

As a script it saves a random-weight model whose tokenizer is this BPE, for timing ``python -m pipeline evaluate``
at the training bench's MedQA lengths (``random:llama2-7b`` itself ships the toy BPE of ``pipeline.model.tiny``:
584 tokens a prompt against this BPE's 257 at vocab 3000; LLaMA's own tokenizer was not available to count):

    python scripts/bench/medqa_bpe.py --spec random:llama2-7b --data tests/data/medqa/us5_test.jsonl \
        --vocab 3000 --out /tmp/llama2-7b-medqa-bpe      # prints the folder; pass it to evaluate --model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[2]


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


def build_medqa_model(spec: str, data: Path, vocab_size: int, out_dir: Path, seed: int = 0) -> Path:
    """Save ``spec``'s random-weight LLaMA (``pipeline.model.tiny.build_random_model``: same weights path, same
    RANDOM_WEIGHTS marker) with ``medqa_tokenizer`` trained on every question of ``data`` into ``out_dir``, once.

    The same tokenizer as scripts/bench/train_throughput.py's (3000 tokens: mean prompt 257), so the training and
    evaluation benchmarks see the same sequence lengths.
    """
    from pipeline.data.questions import load_questions
    from pipeline.model.tiny import RANDOM_MARKER, build_random_model

    marker = Path(out_dir) / RANDOM_MARKER
    if marker.is_file():
        # Training the tokenizer again would only give the same one; a folder of another shape would time another model.
        if f"shape {spec} (seed {seed})" not in marker.read_text():
            raise ValueError(f"{out_dir} holds another random model ({marker.read_text().strip()}), expected {spec}")
        return Path(out_dir)
    tokenizer = medqa_tokenizer(load_questions(data), vocab_size)
    return build_random_model(spec, seed, tokenizer=tokenizer, out_dir=Path(out_dir))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="save a random-weight LLaMA with the MedQA BPE; print its folder")
    ap.add_argument("--spec", default="random:llama2-7b", help="random:<preset>[:key=value,...] (pipeline.model.tiny)")
    ap.add_argument("--data", type=Path, default=ROOT / "tests/data/medqa/us5_test.jsonl",
                    help="questions the tokenizer is trained on (all of them)")
    ap.add_argument("--vocab", type=int, default=3000, help="BPE vocabulary (3000: train_throughput.py's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="folder to write (kept, and reused, if already built)")
    args = ap.parse_args(argv)
    print(build_medqa_model(args.spec, args.data, args.vocab, args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
