#!/usr/bin/env bash
# Peer benchmark on one GPU: the seed recipe's NF4 QLoRA path against plain bf16 LoRA on the same LLaMA-2-7B-shaped
# random-weight model, same data, batch, sequence length, optimizer and steps, measured in the same run.
# Prints peak memory and tokens/s of each and their ratios. Usage: scripts/gpu/nf4_vs_bf16.sh [steps] [outdir]
set -euo pipefail
steps=${1:-10}
out=${2:-runs/nf4-vs-bf16}
root=$(cd "$(dirname "$0")/../.." && pwd)
# The data and the cached random model come from the smoke script (it writes both).
python3 "$root/scripts/gpu/llama7b_shape_smoke.py" --steps "$steps" --output "$out/nf4"
# Same settings as the smoke script (checkpoints every 5 steps included), only the quantization differs.
common=(model.name_or_path=random:llama2-7b "data.train=$out/nf4/data/train.jsonl" "data.eval=$out/nf4/data/eval.jsonl"
        data.max_length=1024 "train.steps=$steps" train.batch_size=8 train.warmup_steps=2 train.checkpoint_every=5
        train.log_every=1 eval.limit=16)
python3 -m pipeline finetune --recipe "$root/recipes/medqa-qlora-7b.yaml" "${common[@]}" quantization.mode=none \
    model.dtype=bfloat16 "train.output_dir=$out/bf16" --plain --overwrite
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = {}
for name, path in (("nf4", f"{out}/nf4/run/report.json"), ("bf16", f"{out}/bf16/report.json")):
    t = json.load(open(path))["training"]
    rows[name] = (t["peak_memory"]["peak_gpu_memory_gib"], t["tokens_per_second"], t["final_loss"])
for name, (mem, tps, loss) in rows.items():
    print(f"{name:5s} peak {mem:7.2f} GiB  {tps:9.1f} tokens/s  final loss {loss:.4f}")
print(f"ratio nf4/bf16: memory {rows['nf4'][0] / rows['bf16'][0]:.3f}  tokens/s {rows['nf4'][1] / rows['bf16'][1]:.3f}")
PY
