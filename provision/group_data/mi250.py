"""AMD Instinct MI250/MI250X (gfx90a). rocminfo lists each card as two GPUs (one per GCD).

Every setting and its default is in all.py (ROCm release: stack.env's ROCM_VERSION); only what differs is here.
"""

expected_gpu_archs = ["gfx90a"]
kit_image_tag = "latest-rocm"  # the Makefile builds clinical-finetune-kit:$(TAG)-rocm, TAG latest by default
