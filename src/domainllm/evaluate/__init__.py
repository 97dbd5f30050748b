"""Evaluation: log-likelihood metrics, generation metrics, the feedback evaluator, version tables."""
