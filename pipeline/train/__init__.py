"""train: one optimizer step (loss, micro-steps, memory plan), the loop around it, optimizer and schedule,
DDP/FSDP, checkpoints and what --resume may change.

May import: pipeline.core, pipeline.data, pipeline.model. Never evaluate or report.
"""
