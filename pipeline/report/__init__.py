"""report: report.json / report.md, statistics, figures, TensorBoard log; compare two runs, reproduce one.

May import: every earlier stage (core, data, model, train, evaluate).
"""
