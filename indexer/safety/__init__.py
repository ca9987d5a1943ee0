"""NSFW scoring: the configured classifiers (PROMPTDEX_SAFETY__CLASSIFIERS) and how their scores combine.

`load_scorer(settings)` reads the setting once per process. Names: `words` (the prompt word list), `nudenet`
(optional extra), `sd-checker` (diffusers' StableDiffusionSafetyChecker from CHECKER_PATH), `auto`, `none`, or
`package.module:factory` for a classifier of your own (called with the settings; it returns an object with `name`,
`key` and `score_prompt(text)` or `score_images(images)`). Image classifiers load on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from indexer.safety.base import ClassifierUnavailable, ImageClassifier, PromptClassifier
from indexer.safety.words import WordListClassifier
from promptdex.errors import ConfigError
from promptdex.records import ClassifierScore, SafetyScore
from promptdex.safety import NONE_KEY
from promptdex.settings import Settings

logger = logging.getLogger(__name__)

BUILT_IN = ("words", "nudenet", "sd-checker")
_SETTING = "PROMPTDEX_SAFETY__CLASSIFIERS"


class _Lazy:
    """An image classifier loaded on first use (its key too: the key of a model is a digest of its weights)."""

    def __init__(self, name: str, load: Callable[[], ImageClassifier]) -> None:
        self.name = name
        self._load = load
        self._loaded: ImageClassifier | None = None
        self._lock = threading.Lock()

    def get(self) -> ImageClassifier:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    @property
    def key(self) -> str:
        return self.get().key

    def score_images(self, images: Sequence[Any]) -> list[float]:
        return self.get().score_images(images)


class Scorer:
    """The configured classifiers: scores a prompt, scores images, and combines both into an image's record."""

    def __init__(self, prompt: Sequence[PromptClassifier], images: Sequence[ImageClassifier]) -> None:
        self.prompt = list(prompt)
        self.images = list(images)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.prompt] + [c.name for c in self.images]

    @property
    def key(self) -> str:
        """The classifier set's key: images scored under another one are scored again by `safety rescore`."""
        keys = [c.key for c in self.prompt] + [c.key for c in self.images]
        return ",".join(keys) if keys else NONE_KEY

    def score_prompt(self, text: str) -> float:
        return max((c.score_prompt(text) for c in self.prompt), default=0.0)

    def prompt_scores(self, text: str) -> dict[str, ClassifierScore]:
        return {c.name: ClassifierScore(score=_unit(c.score_prompt(text)), key=c.key, of="prompt")
                for c in self.prompt}

    def image_scores(self, images: Sequence[Any], *, only: Sequence[str] | None = None
                     ) -> list[dict[str, ClassifierScore]]:
        """Each image classifier's score of each image (`only`: just these classifiers)."""
        out: list[dict[str, ClassifierScore]] = [{} for _ in images]
        if not images:
            return out
        for classifier in self.images:
            if only is not None and classifier.name not in only:
                continue
            scores = classifier.score_images(images)
            if len(scores) != len(images):
                raise RuntimeError(f"classifier {classifier.name} gave {len(scores)} scores for {len(images)} images")
            for found, score in zip(out, scores, strict=True):
                found[classifier.name] = ClassifierScore(score=_unit(score), key=classifier.key)
        return out

    def stale_images(self, scores: Mapping[str, ClassifierScore]) -> list[str]:
        """The image classifiers whose score is missing from `scores` or was made under another key."""
        return [c.name for c in self.images if c.name not in scores or scores[c.name].key != c.key]

    def stale_prompts(self, scores: Mapping[str, ClassifierScore]) -> bool:
        """Whether a prompt classifier's score is missing from `scores` or was made under another key."""
        return any(c.name not in scores or scores[c.name].key != c.key for c in self.prompt)

    def combine(self, scores: Mapping[str, ClassifierScore]) -> SafetyScore:
        """The record of an image: the configured classifiers' scores, the highest, and the set's key when all of
        them scored it under their current keys (scores of classifiers no longer configured are dropped)."""
        current = {c.name: c.key for c in self.prompt} | {c.name: c.key for c in self.images}
        if not current:
            return SafetyScore(score=0.0, by=NONE_KEY, scores={}, key=NONE_KEY)
        kept = {name: s for name, s in scores.items() if name in current}
        complete = all(name in kept and kept[name].key == key for name, key in current.items())
        return _highest(kept, key=self.key if complete else None)

    def for_prompt_only(self, prompt: str) -> SafetyScore:
        """What import knows (it decodes no pixels): the prompt's scores; complete only without image classifiers."""
        scores = self.prompt_scores(prompt)
        if not self.images:
            return self.combine(scores)
        return _highest(scores, key=None)  # pending until index scores the pixels (image classifiers not loaded)

    def for_image(self, prompt: str, image: Any) -> SafetyScore:
        """Every configured classifier's score of one decoded image and its prompt (generation: before storing)."""
        scores = self.prompt_scores(prompt)
        scores.update(self.image_scores([image])[0])
        return self.combine(scores)


def _highest(scores: dict[str, ClassifierScore], *, key: str | None) -> SafetyScore:
    """The record of these scores: the highest and its classifier (None when there are none)."""
    best = max(scores.items(), key=lambda item: item[1].score, default=None)
    return SafetyScore(score=best[1].score if best else None, by=best[0] if best else None, scores=scores, key=key)


def _unit(score: float) -> float:
    value = float(score)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise RuntimeError(f"a classifier gave the score {value}, outside 0 to 1")
    return value


def parse_classifiers(value: str) -> list[str]:
    """The classifier names of the setting, `auto` expanded later; unknown names are refused."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"{_SETTING}: empty; name classifiers ({', '.join(BUILT_IN)}), auto or none")
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"{_SETTING}: none cannot be combined with other classifiers")
        return []
    for name in names:
        if name not in (*BUILT_IN, "auto") and ":" not in name:
            raise ConfigError(f"{_SETTING}: {name!r} is not a classifier; use {', '.join(BUILT_IN)}, auto, none, "
                              f"or package.module:factory")
    return names


def nudenet_installed() -> bool:
    return importlib.util.find_spec("nudenet") is not None


def _custom(spec: str, settings: Settings) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{_SETTING}: cannot import the classifier {spec!r}: {exc}") from exc
    classifier = factory(settings)
    if not hasattr(classifier, "score_prompt") and not hasattr(classifier, "score_images"):
        raise ConfigError(f"{_SETTING}: {spec!r} made an object with neither score_prompt nor score_images")
    return classifier


def load_scorer(settings: Settings, *, threads: int = 0, device: str = "cpu") -> Scorer:
    """The classifiers PROMPTDEX_SAFETY__CLASSIFIERS names (a listed one that cannot run is a ConfigError naming
    what fixes it; under auto, nudenet and sd-checker are used only where they can run)."""
    safety = settings.safety
    prompt: list[PromptClassifier] = []
    images: list[ImageClassifier] = []
    names = parse_classifiers(safety.classifiers)
    auto = "auto" in names
    if auto:
        names = ["words", *(["nudenet"] if nudenet_installed() else []),
                 *(["sd-checker"] if safety.checker_path else []), *(n for n in names if ":" in n)]
    for name in dict.fromkeys(names):
        if name == "words":
            prompt.append(WordListClassifier(settings.words_path))
        elif name == "nudenet":
            if not nudenet_installed():
                raise ClassifierUnavailable(
                    f"{_SETTING}: nudenet is listed but not installed; pip install 'promptdex[nudenet]' (AGPL-3.0) "
                    f"or leave it out")
            images.append(_Lazy("nudenet", lambda: _nudenet(threads)))
        elif name == "sd-checker":
            path = safety.checker_path
            if not path:
                raise ClassifierUnavailable(
                    f"{_SETTING}: sd-checker needs PROMPTDEX_SAFETY__CHECKER_PATH (a StableDiffusionSafetyChecker "
                    f"folder)")
            images.append(_Lazy("sd-checker", lambda p=path: _checker(p, device, threads)))  # type: ignore[misc]
        else:
            custom = _custom(name, settings)
            (prompt if hasattr(custom, "score_prompt") else images).append(custom)
    return Scorer(prompt, images)


def _nudenet(threads: int) -> ImageClassifier:
    from indexer.safety.nudenet import load_nudenet

    return load_nudenet(threads=threads)


def _checker(path: str, device: str, threads: int) -> ImageClassifier:
    from indexer.safety.checker import load_safety_checker

    return load_safety_checker(path, device=device, threads=threads)


_cache: dict[tuple[Any, ...], Scorer] = {}
_cache_lock = threading.Lock()


def get_scorer(settings: Settings, *, threads: int = 0) -> Scorer:
    """One Scorer per configuration in this process (import, index, the worker and the API share it)."""
    s = settings.safety
    key = (s.classifiers, str(settings.words_path), s.checker_path, threads)
    with _cache_lock:
        scorer = _cache.get(key)
        if scorer is None:
            scorer = _cache[key] = load_scorer(settings, threads=threads)
        return scorer
