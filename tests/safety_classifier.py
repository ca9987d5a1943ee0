"""An image classifier for tests, loaded through PROMPTDEX_SAFETY__CLASSIFIERS=tests.safety_classifier:marker.

It flags chosen pictures by a marker painted into their top-left 8x8 pixels: magenta scores 0.97 (explicit: hidden
in strict and moderate mode), cyan 0.7 (flagged: hidden in strict, blurred in moderate), anything else 0.02. Each
image it scores is appended to the file PROMPTDEX_TEST_SAFETY_LOG names (one line per image: its red value at (9, 0),
which the tests set to the picture's number), so tests can count how often it ran. PROMPTDEX_TEST_SAFETY_VERSION goes
into its key (a new version makes every image stale), PROMPTDEX_TEST_SAFETY_DELAY slows it (seconds per image).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

MAGENTA = (255, 0, 255)
CYAN = (0, 255, 255)
EXPLICIT, SUGGESTIVE, CLEAN = 0.97, 0.7, 0.02


def paint(pixels: np.ndarray, marker: tuple[int, int, int] | None, number: int) -> np.ndarray:
    """Mark an RGB uint8 array (at least 16 px wide) with a marker colour (None: none) and its number."""
    if marker is not None:
        pixels[:8, :8] = marker
    pixels[0, 9] = (number % 256, 128, 128)
    return pixels


class MarkerClassifier:
    name = "marker"

    def __init__(self) -> None:
        self.key = "marker-" + os.environ.get("PROMPTDEX_TEST_SAFETY_VERSION", "1")
        self.log = os.environ.get("PROMPTDEX_TEST_SAFETY_LOG")
        self.delay = float(os.environ.get("PROMPTDEX_TEST_SAFETY_DELAY", "0"))

    def score_images(self, images: Sequence[Any]) -> list[float]:
        scores = []
        for image in images:
            pixels = np.asarray(image.convert("RGB"))
            corner = pixels[:8, :8].reshape(-1, 3).mean(axis=0)
            if np.allclose(corner, MAGENTA, atol=12):
                scores.append(EXPLICIT)
            elif np.allclose(corner, CYAN, atol=12):
                scores.append(SUGGESTIVE)
            else:
                scores.append(CLEAN)
            if self.delay:
                time.sleep(self.delay)
            if self.log:
                with open(self.log, "a", encoding="utf-8") as log:
                    log.write(f"{int(pixels[0, 9, 0])}\n")
        return scores


def marker(settings: Any) -> MarkerClassifier:
    return MarkerClassifier()
