"""data: MedQA files -> validated questions -> lm-eval prompts and answer-only labels -> batches and packed steps.

May import: pipeline.core. Never model, train, evaluate or report.
"""
