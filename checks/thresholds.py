"""Every number a check compares against, in one place, each with where it comes from.

Errors are relative Frobenius-norm errors, ``||got - ref|| / ||ref||``, on random normal inputs (never zeros: a
kernel that returns zeros would otherwise pass an absolute-error test, and zeros also run faster, which
inflates TFLOP/s).
"""

from __future__ import annotations

GIB = 1024**3

# --- bf16 numerics -------------------------------------------------------------------------------------------
# bf16 keeps 8 significant bits: unit roundoff u = 2**-8 ~ 3.9e-3. With the inputs already bf16 and fp32
# accumulation (what cuBLAS/hipBLASLt and FlashAttention do), the only error left against an fp32 reference on
# the same inputs is the rounding of the output, ~u/2 per element, ~2e-3 as a norm ratio. 1e-2 leaves a
# margin of ~5x for kernels that round partial sums, and still catches wrong math (errors of order 1).
MATMUL_BF16_MAX_REL_ERR = 1e-2
ATTENTION_FWD_MAX_REL_ERR = 1e-2
# The backward pass rounds more intermediates to bf16 (P, dP, dS) before the last matmuls.
ATTENTION_BWD_MAX_REL_ERR = 2e-2

# Matmul size: 8192^3 (1.1 TFLOP) fills an H100/H200 or an MI300X and takes ~1.5 ms there, so 3 warm-ups and
# 10 timed repeats keep the check well under a second per GPU.
MATMUL_N = 8192
MATMUL_WARMUP = 3
MATMUL_REPEATS = 10

# Throughput below these (median, TFLOP/s, dense bf16, one GPU or GCD) is a warning, not a failure: a slow GPU
# still computes correctly, but 40% of the usual rate means clocks, power or cooling are wrong.
# sm_90: 769-798 TFLOP/s measured on H200 in this project's lease machines (datasheet 990).
# sm_80: A100 datasheet 312; ~250-280 is typical for cuBLAS at this size.
# gfx90a/gfx942: from AMD datasheets (MI250X 383 for 2 GCDs, MI300X 1307), NOT measured by this project.
MATMUL_MIN_TFLOPS = {
    "sm_90": 400.0,
    "sm_80": 150.0,
    "gfx90a": 80.0,
    "gfx942": 350.0,
}

# Attention shape: batch 2, 16 heads, 1024 tokens, head dim 128, causal (a 7B Llama layer's attention).
ATTENTION_SHAPE = (2, 16, 1024, 128)

# --- bitsandbytes NF4 ------------------------------------------------------------------------------------------
# NF4 stores each weight as one of 16 levels (quantiles of N(0,1)) times its block's absmax. On N(0,1) weights the
# round trip's relative error is a property of the method, not of the kernel: measured 0.092 at blocksize 64
# and 0.096 at 128 (1M weights, bitsandbytes 0.50 CPU; the Lloyd-Max optimum for 16 levels is 0.0975).
# Outside [0.06, 0.12] the kernel is wrong: above, levels or scales are off; below, the values were not
# really quantized to 16 levels.
NF4_ROUNDTRIP_REL_ERR = (0.06, 0.12)
# The 4-bit matmul against x @ dequantized(W).T: same weights, so only bf16 rounding remains (see above).
NF4_MATMUL_MAX_REL_ERR = 1e-2
NF4_SHAPE = (4096, 4096)  # weight (out, in): one 7B projection
NF4_BATCH = 16
# Data-centre AMD GPUs (64-wide wavefronts) need blocksize 128 in bitsandbytes' ROCm kernels; 64 elsewhere.
NF4_BLOCKSIZE_CUDA = 64
NF4_BLOCKSIZE_ROCM = 128

# --- collectives ----------------------------------------------------------------------------------------------
ALLREDUCE_BYTES = 256 * 1024**2  # large enough to measure bandwidth, not latency
ALLREDUCE_WARMUP = 5
ALLREDUCE_REPEATS = 20
ALLREDUCE_TIMEOUT_S = 180.0  # spawn + CUDA init + NCCL init per process; a hang beyond this is a failure

# --- host -----------------------------------------------------------------------------------------------------
# Docker's default /dev/shm is 64 MiB: DataLoader workers and NCCL's shared-memory transport fail with "Bus error"
# or "unhandled system error" there. 1 GiB runs a single-GPU fine-tune; multi-GPU runs want ipc=host or 8+ GiB.
SHM_FAIL_BELOW = 1 * GIB
SHM_WARN_BELOW = 8 * GIB
# Caches (Hugging Face hub, Triton, pip): a 7B checkpoint is ~13.5 GB in fp16; a fine-tune writes adapters and
# checkpoints beside it.
DISK_FAIL_BELOW = 20 * GIB
DISK_WARN_BELOW = 50 * GIB
# A CPU machine runs only the CPU demo: its model is embedded (nothing downloaded) and a run writes a few MB.
DISK_CPU_FAIL_BELOW = 1 * GIB

# --- pipeline -------------------------------------------------------------------------------------------------
PIPELINE_STEPS = 2

# --- Triton (numerics.triton_rmsnorm) ---------------------------------------------------------------------------
# One RMSNorm over a 7B Llama's hidden size (4096) for 4096 tokens: the shape liger-kernel's RMSNorm sees in
# training. bf16 inputs and outputs with float32 math inside the kernel, against float32 eager on the same bf16
# values: only the bf16 rounding of the outputs remains (~2e-3 as a norm ratio, see the bf16 section above), so
# 1e-2 leaves a 5x margin and still catches wrong math (a missing rstd or weight gives errors of order 1).
TRITON_RMSNORM_SHAPE = (4096, 4096)
TRITON_RMSNORM_EPS = 1e-6
TRITON_RMSNORM_FWD_MAX_REL_ERR = 1e-2
TRITON_RMSNORM_BWD_MAX_REL_ERR = 1e-2
