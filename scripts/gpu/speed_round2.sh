#!/usr/bin/env bash
# Speed round two (issue 24) in one device call: the standard HF QLoRA recipe, the tuned peer (HF + PEFT + liger
# incl. fused linear cross-entropy, no checkpointing, padding-free) and ours, same sequences, whole loop timed from
# step 1 (--warmup 0), each group in a FRESH process with COLD compile caches (TRITON_CACHE_DIR and
# TORCHINDUCTOR_CACHE_DIR point at new empty folders; cuDNN keeps no plan cache on disk), then the evaluate
# command before/after. Everything lands in $OUT/speed.tgz, the log in $OUT/speed.log, the short table last.
#
# Usage: scripts/gpu/speed_round2.sh [OUTDIR] [BEFORE_ROOT]
#   BEFORE_ROOT: a checkout of the code before this change for the evaluate "before" row (skipped if absent).
# CPU dry run: SPEED_TINY=1 scripts/gpu/speed_round2.sh /tmp/s2   (2-layer model, a few steps, CPU)
# The device image has neither bitsandbytes nor liger-kernel: carry bitsandbytes 0.50.2 and liger-kernel 0.8.5 wheels
# (43 MB + 1 MB) and install them with pip --target /tmp/site, PYTHONPATH=/tmp/site (docs/benchmarks.md).
# Budget: ~9.5 min on an H100 (7B build ~40 s, each fresh process loads NF4 in ~25 s); every stage has a timeout.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${OUT:-runs/speed-round2}}
before=${2:-}
work=$(mktemp -d /tmp/speed2.XXXX)
mkdir -p "$out" "$work/cold"
cd "$root" || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export KIT_CACHE_DIR=${KIT_CACHE_DIR:-/tmp/kitcache}
log="$out/speed.log"
py=${PYTHON:-python3}
bench=(scripts/bench/train_throughput.py)
if [ -n "${SPEED_TINY:-}" ]; then
    bench+=(--tiny --limit 40); s32=(--per-step 8 --steps 3); s8=(--per-step 4 --steps 4); model=${SPEED_MODEL:-}
else
    s32=(--per-step 32 --steps ${S32_STEPS:-15}); s8=(--per-step 8 --steps 50); model=random:llama2-7b
fi
t_start=$(date +%s)
# SPEED_STAGES: which groups to run (a32 b8 eval levers profile); SPEED_A32_ONLY: the trainers of group a32
stages=" ${SPEED_STAGES:-a32 b8 eval levers profile} "
want() { [[ "$stages" == *" $1 "* ]]; }
left() { echo $(( ${BUDGET_S:-575} - ($(date +%s) - t_start) )); }

# cold NAME: fresh, empty Triton/inductor cache folders for the next process (a new folder each time)
cold() { local d="$work/cold/$1"; mkdir -p "$d/triton" "$d/inductor"
         export TRITON_CACHE_DIR="$d/triton" TORCHINDUCTOR_CACHE_DIR="$d/inductor"; }
# stage NAME SECONDS CMD...: run with a timeout (never past the budget), log its wall time
stage() {
    local name=$1 limit=$2; shift 2
    local l; l=$(left); [ "$l" -lt "$limit" ] && limit=$l
    if [ "$limit" -lt 20 ]; then echo "== $name: skipped (budget)" | tee -a "$log"; return; fi
    echo "== $name (timeout ${limit}s, triton cache ${TRITON_CACHE_DIR:-default}): $*" | tee -a "$log"
    local t0; t0=$(date +%s.%N)
    timeout "$limit" "$@" >>"$work/$name.txt" 2>&1; local rc=$?
    local dt; dt=$(python3 -c "import time;print(f'{time.time()-$t0:.1f}')")
    echo "== $name: rc $rc, wall ${dt} s" | tee -a "$log" "$work/walls.txt"
    grep -v -E "kernels-community|FutureWarning|warnings.warn" "$work/$name.txt" | tail -40 >>"$log"
}

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    $py -c 'import importlib.metadata as m
for n in ("torch","transformers","peft","bitsandbytes","liger-kernel","triton","flash-attn","accelerate","tokenizers"):
    try: print(n, m.version(n))
    except Exception: print(n, "not installed")'
    nproc
} >>"$log" 2>&1

# Fail in a second, not after the 7B build: the trainers need bitsandbytes and the tuned peer liger-kernel.
if [ -z "${SPEED_TINY:-}" ] && ! $py -c "import bitsandbytes, liger_kernel" >>"$log" 2>&1; then
    echo "bitsandbytes or liger-kernel missing: carry their wheels (see the top of this script)" | tee -a "$log"; exit 2
fi
# The 7B random model, built once into KIT_CACHE_DIR (not part of any timed stage)
stage build 120 $py -c "import sys; sys.path.insert(0, '.'); from pipeline.model.load import resolve_model; print(resolve_model('${model:-random:llama2-7b}'))"

# 1. Seed recipe at 32 sequences/step: standard, ours (cold Triton), tuned peer (liger already compiled in this
#    process: in its favour), ours under a 64 GiB cap. One fresh process, cold caches.
cold a32
want a32 && stage a32 ${A32_TIMEOUT:-260} $py "${bench[@]}" "${s32[@]}" --warmup 0 --cap-gb 64 \
    --only "${SPEED_A32_ONLY:-peer,ours,tuned,ours-matched,ours-cap}" --out "$work/a32.json"
# 2. Recipe default 8 sequences/step, 50 steps: standard then ours, fresh process, cold caches.
cold b8
want b8 && stage b8 150 $py "${bench[@]}" "${s8[@]}" --warmup 0 --only peer,ours --out "$work/b8.json"
# 3. Evaluate, whole command, with the CLI's defaults (the seed recipe's 256 questions within 16,384 prompt tokens).
#    Timed on the same random 7B shape with the MedQA BPE of the training bench (scripts/bench/medqa_bpe.py: mean
#    prompt 257 tokens against the toy BPE's 584), built untimed first like the 7B above; one letters run on
#    random:llama2-7b itself (toy 512-token BPE, prompts 3x longer) and the "before" checkout for comparison.
evspec=${model:-random:llama2-7b}
evmodel="$KIT_CACHE_DIR/medqa-bpe/$(printf '%s' "$evspec" | tr -c 'A-Za-z0-9_.\n' '-')"
want eval && stage build-eval-model 120 $py scripts/bench/medqa_bpe.py --spec "$evspec" \
    --data tests/data/medqa/us5_test.jsonl --vocab 3000 --out "$evmodel"
ev=(--data tests/data/medqa/us5_test.jsonl)
[ -n "${SPEED_TINY:-}" ] && ev+=(--limit 20)
if want eval && [ -n "$before" ] && [ -d "$before/pipeline" ]; then
    stage eval-before-letter 75 env -C "$before" PYTHONPATH="$before" $py -m pipeline evaluate --model "$evspec" "${ev[@]}" --output "$work/ev0" --scoring letter
fi
want eval && stage eval-toy-letter 75 $py -m pipeline evaluate --model "$evspec" "${ev[@]}" --output "$work/ev1" --scoring letter
want eval && stage eval-letter 60 $py -m pipeline evaluate --model "$evmodel" "${ev[@]}" --output "$work/ev2" --scoring letter
want eval && stage eval-cloze 90 $py -m pipeline evaluate --model "$evmodel" "${ev[@]}" --output "$work/ev3" --scoring cloze
# 4. Levers at 8/step, each in a fresh process: the first round's default (rows, no varlen) cold; ours again with
#    the caches of stage 2 kept (what a compose volume for the Triton cache gives a new container).
cold c8
want levers && stage c8-round1 90 $py "${bench[@]}" "${s8[@]}" --warmup 0 --only ours-round1 --out "$work/c8.json"
export TRITON_CACHE_DIR="$work/cold/b8/triton" TORCHINDUCTOR_CACHE_DIR="$work/cold/b8/inductor"
want levers && stage d8-persisted 90 $py "${bench[@]}" "${s8[@]}" --warmup 0 --only ours --out "$work/d8.json"
cold e8
want levers && stage e8-rows 90 $py "${bench[@]}" "${s8[@]}" --warmup 0 --only ours-rows,ours-rows-warmup --out "$work/e8.json"

# 5. A profile of one step each (warm, after 1 untimed step) for the record
want profile && stage f32-profile 60 $py "${bench[@]}" --per-step 32 --steps 3 --warmup 1 --only ours,ours-rows --profile "$work/prof" --out "$work/f32.json"

# Short table last
$py - "$work" >>"$log" 2>&1 <<'EOF'
import json, sys, pathlib
work = pathlib.Path(sys.argv[1])
for name in ("a32", "b8", "c8", "d8", "e8"):
    f = work / f"{name}.json"
    if not f.exists():
        print(name, "no result"); continue
    d = json.loads(f.read_text())
    m = d["meta"]
    print(f"-- {name}: {m['versions'].get('gpu')} matmul {m.get('matmul_tflops') or 0:.0f} TFLOP/s, load {m['load_s']} s,"
          f" failed: {list(m.get('failed', {}))}")
    by = {r["trainer"]: r for r in d["results"]}
    for r in d["results"]:
        tps = r["tokens_per_s"] or 0
        tf = 4 * m["base_params"] * tps / 1e12
        rel = " ".join(f"x{p} {tps / by[p]['tokens_per_s']:.2f}" for p in ("peer", "tuned") if p in by and by[p]["tokens_per_s"])
        print(f"{r['trainer']:<18} {tps:7.0f} tok/s  first5 {r.get('first5_tokens_per_s') or 0:6.0f}  peak {r.get('peak_gib') or 0:5.1f} GiB"
              f"  loss {r['final_loss']:.4f}  {tf:5.0f} TFLOP/s  shapes {r.get('distinct_shapes', '-')}  {rel}")
EOF
tail -n 12 "$work/walls.txt" >>"$log" 2>/dev/null
for f in "$work"/ev*/metrics.json; do [ -f "$f" ] && echo "$f: $(head -c 300 "$f")" >>"$log"; done
tar -czf "$out/speed.tgz" -C "$work" --exclude='cold' --exclude='ev*/predictions.jsonl' . 2>/dev/null
echo "total $(( $(date +%s) - t_start )) s" | tee -a "$log"
sed -n '/^-- a32/,$p' "$log"
