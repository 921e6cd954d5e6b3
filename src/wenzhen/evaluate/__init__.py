"""Evaluation: generation metrics on held-out consultations, medical exam accuracy, safety probes, comparisons.

Library entry points (the CLI in `commands.py` only parses arguments and calls these):
`compute_generation_metrics(predictions, references)`, `evaluate_generation(...)`, `evaluate_exam(...)`,
`evaluate_safety(...)`, `compare_runs(...)`, each importable from its module. The package itself imports nothing,
so training can use `evaluate.samples` without loading the word segmenter until metrics are computed.
"""
