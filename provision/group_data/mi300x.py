"""AMD Instinct MI300X (gfx942).

Every setting and its default is in all.py (ROCm release: stack.env's ROCM_VERSION; the opt-in tune_* switches
from AMD's MI300X tuning guide); only what differs is here.
"""

expected_gpu_archs = ["gfx942"]
kit_image_tag = "latest-rocm"  # the Makefile builds clinical-finetune-kit:$(TAG)-rocm, TAG latest by default
