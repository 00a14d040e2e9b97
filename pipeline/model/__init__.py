"""model: resolve and load the base (NF4 or a stated fallback), attention and fused kernels, precision, LoRA;
synthetic and embedded models for tests and the demo.

May import: pipeline.core, pipeline.data. Never train, evaluate or report.
"""
