"""Evaluation: test NLL (nll.py), sample quality by a classifier (quality.py), figures (figures.py)."""
