#!/usr/bin/env bash
# Several-GPU measurements on a 2-GPU node (docs/distributed.md), random weights, MedQA's shipped test split as
# training text (tests/data/medqa/us5_test.jsonl; real MedQA lengths, no evaluation):
#   1. DDP scaling: LLaMA-2-7B-shaped NF4 QLoRA, global batch 16 = 1 GPU x 8 x grad_accum 2 vs 2 GPUs x 8.
#   2. FSDP + QLoRA: LLaMA-2-70B-shaped with 4 and 8 of its 80 layers (per-layer figures = the difference).
# Usage: scripts/gpu/dist_bench.sh OUTDIR [steps]. Writes OUTDIR/<run>/report.json and OUTDIR/<run>.log, then a table.
set -uo pipefail
out=${1:?usage: dist_bench.sh OUTDIR [steps]}
steps=${2:-10}
root=$(cd "$(dirname "$0")/../.." && pwd)
data="$root/tests/data/medqa/us5_test.jsonl"
mkdir -p "$out"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
common=("data.train=$data" data.eval=null data.max_length=1024 "train.steps=$steps" train.checkpoint_every=0
        train.log_every=1 train.warmup_steps=2)
seven=(--recipe "$root/recipes/medqa-qlora-7b.yaml" model.name_or_path=random:llama2-7b "${common[@]}")
big() { echo "random:llama2-70b:num_hidden_layers=$1"; }

# Build the random checkpoints first, the 70B-shaped ones on the second GPU meanwhile.
(CUDA_VISIBLE_DEVICES=1 python3 -c "from pipeline.model.tiny import build_random_model as b; b('$(big 4)'); b('$(big 8)')" \
    >"$out/build-70b.log" 2>&1) &
builder=$!
CUDA_VISIBLE_DEVICES=0 python3 -c "from pipeline.model.tiny import build_random_model as b; b('random:llama2-7b')" \
    >"$out/build-7b.log" 2>&1
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -m pipeline finetune "${seven[@]}" train.batch_size=8 train.grad_accum=2 \
    "train.output_dir=$out/ddp-1gpu" --plain --overwrite >"$out/ddp-1gpu.log" 2>&1
wait "$builder"
fsdp() {  # fsdp NAME LAYERS [override...]
    local name=$1 layers=$2; shift 2
    timeout 120 torchrun --standalone --nproc-per-node 2 -m pipeline finetune \
        --recipe "$root/recipes/medqa-qlora-70b.yaml" "model.name_or_path=$(big "$layers")" "${common[@]}" \
        train.batch_size=4 train.grad_accum=2 "train.output_dir=$out/$name" --plain --overwrite "$@" \
        >"$out/$name.log" 2>&1
}
fsdp fsdp-70b-L8 8
# If the default (flat parameters) failed, the other FSDP setting, so one 70B-shaped figure comes back.
[ -f "$out/fsdp-70b-L8/report.json" ] || fsdp fsdp-70b-L8-orig 8 distributed.use_orig_params=true
timeout 120 torchrun --standalone --nproc-per-node 2 -m pipeline finetune "${seven[@]}" train.batch_size=8 \
    train.grad_accum=1 "train.output_dir=$out/ddp-2gpu" --plain --overwrite >"$out/ddp-2gpu.log" 2>&1
fsdp fsdp-70b-L4 4
python3 "$root/scripts/gpu/dist_table.py" "$out"
