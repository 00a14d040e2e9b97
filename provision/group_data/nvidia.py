"""NVIDIA data-centre GPUs (A100, H100, H200): driver from NVIDIA's CUDA repository plus the Container Toolkit.

Every setting and its default is in all.py (driver branch: stack.env's NVIDIA_DRIVER_BRANCH; expected compute
capabilities: the image's CUDA_ARCH_LIST, e.g. 8.0 A100, 9.0 H100/H200); only what differs is here.
"""

kit_image_tag = "latest-cuda"  # the Makefile builds clinical-finetune-kit:$(TAG)-cuda, TAG latest by default
