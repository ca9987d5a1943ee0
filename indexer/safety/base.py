"""The classifier seam: what a prompt or image NSFW classifier offers, and the error when one cannot load."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from promptdex.errors import ConfigError


class ClassifierUnavailable(ConfigError):
    """A configured classifier cannot run here (not installed, weights not loadable); the message names the
    setting or the package that fixes it."""


class PromptClassifier(Protocol):
    """Scores prompt text in [0, 1] (1: certainly NSFW)."""

    @property
    def name(self) -> str:
        """As listed in PROMPTDEX_SAFETY__CLASSIFIERS."""

    @property
    def key(self) -> str:
        """The name plus a digest of what decides its scores (list, weights, version): changes when they would."""

    def score_prompt(self, text: str) -> float: ...


class ImageClassifier(Protocol):
    """Scores decoded RGB images (PIL) in [0, 1], one score per image, in order."""

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...

    def score_images(self, images: Sequence[Any]) -> list[float]: ...
