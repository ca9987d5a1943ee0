"""Safe-mode levels by role, what each level shows, and how the classifiers' scores combine into an image's."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from indexer.safety import Scorer, load_scorer, parse_classifiers
from indexer.safety.base import ClassifierUnavailable
from indexer.safety.words import WordListClassifier
from promptdex.errors import ConfigError, Forbidden
from promptdex.records import ClassifierScore, ImageFilter, SafetyScore
from promptdex.safety import flagged, resolve_level, restrict, role_levels, shown_at
from promptdex.settings import SafeLevel, SafetySettings, get_settings

S = SafetySettings()


def scored(score: float | None, *, complete: bool = True) -> SafetyScore:
    return SafetyScore(score=score, by="x", scores={}, key="k" if complete else None)


def test_each_role_gets_its_default_and_may_not_go_past_its_maximum() -> None:
    assert role_levels(None, S) == (SafeLevel.STRICT, [SafeLevel.STRICT, SafeLevel.MODERATE])
    assert role_levels("viewer", S) == (SafeLevel.STRICT, list(SafeLevel))
    assert role_levels("admin", S)[1] == list(SafeLevel)
    assert resolve_level(None, None, S) is SafeLevel.STRICT
    assert resolve_level(None, "creator", S) is SafeLevel.MODERATE
    with pytest.raises(Forbidden, match="PROMPTDEX_SAFETY__ANONYMOUS_MAX"):
        resolve_level(SafeLevel.OFF, None, S)
    allowed = SafetySettings(anonymous_max=SafeLevel.OFF)  # an admin allows it
    assert resolve_level(SafeLevel.OFF, None, allowed) is SafeLevel.OFF
    clamped = SafetySettings(anonymous_default=SafeLevel.OFF)  # a default past the maximum is clamped
    assert role_levels(None, clamped)[0] is SafeLevel.MODERATE
    locked = SafetySettings(viewer_max=SafeLevel.STRICT)
    with pytest.raises(Forbidden, match="PROMPTDEX_SAFETY__VIEWER_MAX"):
        resolve_level(SafeLevel.MODERATE, "viewer", locked)


@pytest.mark.parametrize(("safety", "strict", "moderate", "is_flagged"), [
    (scored(0.1), True, True, False),
    (scored(0.5), False, True, True),  # at the threshold: flagged
    (scored(0.89), False, True, True),
    (scored(0.9), False, False, True),
    (scored(0.1, complete=False), False, True, True),  # not scored by every classifier yet
    (None, False, True, True),  # never scored
])
def test_what_each_level_shows(safety: SafetyScore | None, strict: bool, moderate: bool, is_flagged: bool) -> None:
    assert shown_at(safety, SafeLevel.STRICT, S) is strict
    assert shown_at(safety, SafeLevel.MODERATE, S) is moderate
    assert shown_at(safety, SafeLevel.OFF, S) is True
    assert flagged(safety, S) is is_flagged


def test_restrict_sets_the_sql_bounds_and_keeps_the_other_filters() -> None:
    base = ImageFilter(model="m")
    assert restrict(base, SafeLevel.STRICT, S).model_dump(include={"model", "nsfw_below", "nsfw_complete"}) == {
        "model": "m", "nsfw_below": 0.5, "nsfw_complete": True}
    assert restrict(base, SafeLevel.MODERATE, S).nsfw_complete is None
    assert restrict(ImageFilter(), SafeLevel.OFF, S).is_empty()


class _Images:
    def __init__(self, name: str, key: str, score: float) -> None:
        self.name, self.key, self.score, self.calls = name, key, score, 0

    def score_images(self, images: Any) -> list[float]:
        self.calls += len(images)
        return [self.score] * len(images)


def test_combine_takes_the_highest_score_and_is_complete_only_with_every_current_key() -> None:
    words = WordListClassifier(None)
    image = _Images("pix", "pix-1", 0.7)
    scorer = Scorer([words], [image])
    record = scorer.for_image("a cat", object())
    assert record.score == pytest.approx(0.7) and record.by == "pix" and record.key == scorer.key
    assert record.scores["words"].of == "prompt"
    partial = scorer.for_prompt_only("a nude cat")
    assert partial.pending and partial.score == 1.0 and image.calls == 1  # no pixels looked at
    stale = dict(record.scores)
    stale["pix"] = ClassifierScore(score=0.7, key="pix-0")
    assert scorer.stale_images(stale) == ["pix"] and scorer.combine(stale).key is None
    stale["gone"] = ClassifierScore(score=1.0, key="old")  # a classifier no longer configured is dropped
    stale["pix"] = ClassifierScore(score=0.2, key="pix-1")
    combined = scorer.combine(stale)
    assert "gone" not in combined.scores and combined.score == pytest.approx(0.2) and not combined.pending
    nothing = Scorer([], [])
    assert nothing.combine({}).model_dump() == {"score": 0.0, "by": "none", "scores": {}, "key": "none"}


def test_a_classifier_score_out_of_range_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside 0 to 1"):
        Scorer([], [_Images("bad", "bad-1", 1.5)]).image_scores([object()])


@pytest.mark.parametrize(("value", "message"), [
    ("", "empty"), ("words,none", "cannot be combined"), ("wordz", "'wordz' is not a classifier"),
])
def test_bad_classifier_settings_name_the_setting(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"PROMPTDEX_SAFETY__CLASSIFIERS: .*{message}"):
        parse_classifiers(value)


def test_auto_uses_nudenet_when_installed_and_the_checker_only_with_its_path(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Any) -> None:
    settings = get_settings(data_dir=tmp_path)
    assert load_scorer(settings).names == ["words", "nudenet"]
    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if not installed
    monkeypatch.setattr("indexer.safety.nudenet_installed", lambda: False)
    assert load_scorer(settings).names == ["words"]
    with pytest.raises(ClassifierUnavailable, match=r"promptdex\[nudenet\]"):
        load_scorer(get_settings(data_dir=tmp_path, safety={"classifiers": "nudenet"}))
    with pytest.raises(ClassifierUnavailable, match="PROMPTDEX_SAFETY__CHECKER_PATH"):
        load_scorer(get_settings(data_dir=tmp_path, safety={"classifiers": "sd-checker"}))
    with pytest.raises(ConfigError, match="cannot import the classifier 'no.such:thing'"):
        load_scorer(get_settings(data_dir=tmp_path, safety={"classifiers": "no.such:thing"}))
    custom = load_scorer(get_settings(data_dir=tmp_path, safety={"classifiers": "tests.safety_classifier:marker"}))
    assert custom.names == ["marker"] and custom.key == "marker-1"
