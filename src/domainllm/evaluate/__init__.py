"""Evaluation: likelihood and generation metrics, the feedback evaluator, version tables."""
