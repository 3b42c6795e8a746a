"""Scoring: the dual-bank ExDD score, PatchCore, anomaly maps, and the one model object with its card."""
