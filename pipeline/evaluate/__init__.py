"""evaluate: log-likelihood scoring of each question's choices (letter or cloze), sharded over ranks.

May import: pipeline.core, pipeline.data, pipeline.model, pipeline.train (its distributed helpers). Never report.
"""
