#!/usr/bin/env bash
# MedQA evaluation throughput on one GPU (issue 13): all 1273 test questions (tests/data/medqa/us5_test.jsonl,
# 5 options) on a LLaMA-2-7B-shaped model with random weights (bf16, SDPA), letter and cloze scoring, shared-prompt
# scoring at several batch settings against one sequence per option (the peer) in the same process, same
# predictions checked. Goal: the whole split in under 60 s per scoring. Prompts are tokenized by a BPE trained on
# the split (scripts/bench/medqa_bpe.py, vocabulary = the model's 32000 embedding rows), standing in for LLaMA's.
#
# Usage: scripts/gpu/eval_throughput.sh [OUTDIR]   (default: $OUT, else runs/eval-throughput)
# Writes OUTDIR/versions.txt, build.log, eval_throughput.log (the tables) and eval_throughput.json (every number).
# Needs python3 with torch, transformers and tokenizers; no bitsandbytes (bf16). Expected: ~5 minutes on an H200
# (build and load of the 13.5 GB model ~1-1.5 min, each peer ~1 min, each shared-prompt run well under 30 s); the
# bench is stopped at 390 s so the whole script ends inside 8 minutes, and its JSON is written after each scoring.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${OUT:-runs/eval-throughput}}
mkdir -p "$out"
cd "$root" || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# Ignored by git (.cache/), so a warm machine keeps the built model between calls.
export KIT_CACHE_DIR=${KIT_CACHE_DIR:-$root/.cache/kit}
# For a dry run of this script on a CPU: EVAL_MODEL=random:llama2-7b:num_hidden_layers=2,hidden_size=64,...
# EVAL_DEVICE=cpu EVAL_LIMIT=10. Defaults: the measurement above.
model=${EVAL_MODEL:-random:llama2-7b}
device=${EVAL_DEVICE:-cuda}
limit=(); [ -n "${EVAL_LIMIT:-}" ] && limit=(--limit "$EVAL_LIMIT")

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import sys, torch, transformers, tokenizers
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| transformers", transformers.__version__, "| tokenizers", tokenizers.__version__)
print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())'
} 2>&1 | tee "$out/versions.txt"

# The random 7B checkpoint is built once (on the GPU) and saved; the bench then loads it as any checkpoint.
start=$SECONDS
python3 -c "from pipeline.model.tiny import build_random_model as b; print(b('$model'))" >"$out/build.log" 2>&1 \
    || { echo "building $model failed:"; tail -20 "$out/build.log"; exit 1; }
echo "model ready in $((SECONDS - start)) s" | tee -a "$out/build.log"

# Shared-prompt at 16 and 32 questions a batch, and at token budgets of 16384 and 32768 padded prompt tokens a
# batch (up to 256 short prompts); the peer once per scoring at 32 sequences a pass. Letter first, then cloze.
timeout 390 python3 scripts/bench/eval_shared_prompt.py --model "$model" --tokenizer medqa-bpe \
    --data tests/data/medqa/us5_test.jsonl "${limit[@]}" --scoring both --device "$device" --repeats 1 --warmup 8 \
    --batch-size 16 32 256:16384 256:32768 --peer-batch-size 32 --out "$out/eval_throughput.json" \
    2>&1 | tee "$out/eval_throughput.log"
rc=${PIPESTATUS[0]}
case $rc in
    0) echo "bench: done, shared-prompt predictions equal the peer's" ;;
    1) echo "bench: done, but some predictions differ from the peer's (see the tables)" ;;
    124) echo "bench: stopped at 390 s; eval_throughput.json holds the scorings that finished" ;;
    *) echo "bench: failed with exit status $rc" ;;
esac | tee -a "$out/eval_throughput.log"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a "$out/versions.txt"
echo "total $SECONDS s"
exit "$rc"
