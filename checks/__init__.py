"""Environment smoke checks for ROCm and CUDA nodes and images: ``python -m checks`` (see docs/checks.md)."""
