"""The prompt word list: normalisation of front-end prompt syntax, whole-word matching, the admin file."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.safety.words import WordListClassifier, normalise, parse_list
from promptdex.errors import ConfigError


@pytest.fixture(scope="module")
def words() -> WordListClassifier:
    return WordListClassifier(None)


@pytest.mark.parametrize(("prompt", "flagged"), [
    # weight syntax, case and punctuation are stripped before matching
    ("a (nude:1.2) woman on a beach", True),
    ("((NAKED)) figure, masterpiece", True),
    ("[nsfw], best quality", True),
    ("{{{topless}}} dancer", True),
    ("Nude! portrait.", True),
    ("portrait,nude,studio", True),
    ("a painting \\(nude\\) in a museum", True),
    ("a [cat:nude:0.5] on a sofa", True),  # prompt editing: both sides count
    ("a [dog|naked] man", True),  # alternation
    ("<lora:nsfw_style_v2:0.8> a cat", True),  # a LoRA's name counts
    ("1girl, large_breasts, smile", True),  # booru tags: underscores separate words
    ("see-through dress", True),  # phrases match across punctuation
    ("spread (legs:1.1)", True),
    ("  NSFW  ", True),
    # words that contain a listed word must not match
    ("an assistant in a classroom", False),
    ("cumulus clouds over Scunthorpe", False),
    ("a therapist and a peacock in a cockpit", False),
    ("bass guitar on a sextant", False),
    ("Sussex countryside, analysis chart", False),
    ("titanic at sea, a nudelholz on the table", False),
    ("a denuded hillside", False),
    ("a (cat:1.2) in BREAK a garden AND a house", False),
    ("", False),
])
def test_the_prompt_classifier_on_a_table_of_cases(words: WordListClassifier, prompt: str, flagged: bool) -> None:
    assert (words.score_prompt(prompt) >= 0.5) is flagged, words.matches(prompt)


def test_scores_are_the_highest_listed_score_and_mild_words_stay_below_the_threshold(
        words: WordListClassifier) -> None:
    assert words.score_prompt("a woman in a bikini") == pytest.approx(0.3)
    assert words.score_prompt("a bikini, nude") == 1.0
    assert words.matches("lingerie and nude") == [("lingerie", 0.6), ("nude", 1.0)]


def test_normalising_strips_weights_but_keeps_numbers_in_words() -> None:
    assert normalise("(masterpiece:1.4), [blurry:0.8], score_9, <lora:add_detail:-0.5>") == [
        "masterpiece", "blurry", "score", "9", "add", "detail"]


def test_the_admin_file_adds_drops_and_is_read_again_when_it_changes(tmp_path: Path) -> None:
    admin = tmp_path / "nsfw-words.txt"
    classifier = WordListClassifier(admin)  # the file need not exist
    shipped_key = classifier.key
    assert classifier.score_prompt("a zorblat") == 0.0
    admin.write_text("# mine\nzorblat = 0.7\n!nude\ngreen goo\n")
    assert classifier.score_prompt("a ZORBLAT") == pytest.approx(0.7)
    assert classifier.score_prompt("a nude") == 0.0  # dropped from the shipped list
    assert classifier.score_prompt("some green goo") == 1.0
    assert classifier.key != shipped_key
    admin.unlink()
    assert classifier.score_prompt("a nude") == 1.0 and classifier.key == shipped_key


@pytest.mark.parametrize(("text", "message"), [
    ("ok\nbad = lots\n", "words.txt:2: 'lots' is not a score"),
    ("ok = 1.5\n", "words.txt:1: the score 1.5 is outside 0 to 1"),
    ("(:1.2)\n", "words.txt:1: '(:1.2)' has no word in it"),
])
def test_a_bad_line_names_the_file_and_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_list(text, "words.txt")


def test_a_bad_admin_file_is_an_error_naming_it(tmp_path: Path) -> None:
    admin = tmp_path / "words.txt"
    admin.write_text("zorblat = high\n")
    with pytest.raises(ConfigError, match="words.txt:1"):
        WordListClassifier(admin)
