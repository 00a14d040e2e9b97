"""QLoRA fine-tune-and-evaluate pipeline for MedQA-style multiple-choice questions (``python -m pipeline``).

Data flows one way: config -> data -> prompts/batching -> model -> train -> evaluate -> report.
"""
