"""Evaluation: image and pixel metrics, the evaluate report, heatmap overlays."""
