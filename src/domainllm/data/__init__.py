"""Preparation of the non-corpus data sets: domain texts, instructions, feedback pairs."""
