"""The normal training images the normal bank leaves out, so evaluate can calibrate the deployment threshold
on normals the banks never saw (evaluation.calibration; design.md, "Calibrated threshold")."""

from __future__ import annotations

from typing import Any

import numpy as np

CALIBRATION_STREAM = 0xCA11  # mixed into the seed: the held-out choice never shares a random stream


def calibration_ids(image_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The normal training images held out for calibration: round(fraction * n) of them, seeded, at least
    one when fraction > 0, and never all (the bank needs images too)."""
    n = len(image_ids)
    if fraction <= 0 or n < 2:
        return set()
    k = min(n - 1, max(1, round(fraction * n)))
    pick = np.random.default_rng([int(seed), CALIBRATION_STREAM]).choice(n, k, replace=False)
    return {image_ids[int(i)] for i in pick}


def calibration_images(normal: Any, fraction: float, seed: int) -> set[str]:
    """`calibration_ids` of a normal feature store, chosen among its own images: of a union with the normals
    confirmed on the line (features.store_union), among the first part's only, so verdicts never change
    which images calibrate the threshold."""
    own = normal.parts[0].images if hasattr(normal, "parts") else normal.images
    return calibration_ids(own, fraction, seed)
