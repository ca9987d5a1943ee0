"""The prompt classifier: a word and phrase list matched on whole, normalised words of the positive prompt.

Normalising lower-cases the text and strips the front ends' prompt syntax before splitting it into words:
A1111 weights `(word:1.2)`, `((word))`, `[word]`, `{word}` (NovelAI), escaped brackets, prompt editing
`[from:to:0.5]` (both sides count), alternation `[a|b]`, `<lora:name:0.8>` (the name's words count), `BREAK`
and `AND`; underscores (booru tags) and punctuation separate words. An entry matches a run of whole words, so
`ass` never matches inside `assistant` and `cum` never inside `cumulus`. Plurals are listed as entries of their
own. The negative prompt is never scored: it lists what the image must not show.

List files: one entry per line, `word` or `some phrase = 0.6` (the score; 1.0 when left out); `#` starts a
comment; `!word` drops an entry of the shipped list. The admin file (PROMPTDEX_SAFETY__WORDS_FILE) is read
again when it changes.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from promptdex.errors import ConfigError

logger = logging.getLogger(__name__)

SHIPPED = Path(__file__).with_name("nsfw-words.txt")
_LORA = re.compile(r"<\s*(?:lora|lyco|hypernet|embedding|ti)\s*:\s*([^:>]*)(?::[^>]*)?>", re.IGNORECASE)
_WEIGHT = re.compile(r":\s*-?\d+(?:\.\d+)?\s*(?=[)\]}>]|$)")  # `:1.2)` in (word:1.2), `:0.5]` in [a:b:0.5]
_KEYWORDS = re.compile(r"\b(?:BREAK|AND)\b")  # A1111's chunk break and composable diffusion (upper case only)
_SPLIT = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> list[str]:
    """The words of a prompt, lower-cased, with weight syntax, LoRA tags and punctuation stripped."""
    text = _LORA.sub(lambda m: " " + m.group(1) + " ", text)
    text = text.replace("\\(", " ").replace("\\)", " ").replace("\\[", " ").replace("\\]", " ")
    text = _WEIGHT.sub(" ", text)
    text = _KEYWORDS.sub(" ", text)
    return [word for word in _SPLIT.split(text.lower()) if word]


@dataclass(frozen=True)
class _List:
    entries: dict[tuple[str, ...], float]
    longest: int
    digest: str


def parse_list(text: str, where: str) -> tuple[dict[tuple[str, ...], float], set[tuple[str, ...]]]:
    """The entries of a list file and the shipped entries it drops; a bad line names the file and the line."""
    entries: dict[tuple[str, ...], float] = {}
    dropped: set[tuple[str, ...]] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        drop = line.startswith("!")
        phrase, _, score_text = line.lstrip("!").partition("=")
        words = tuple(normalise(phrase))
        if not words:
            raise ConfigError(f"{where}:{number}: {raw.strip()!r} has no word in it")
        if drop:
            dropped.add(words)
            continue
        try:
            score = float(score_text) if score_text.strip() else 1.0
        except ValueError:
            raise ConfigError(f"{where}:{number}: {score_text.strip()!r} is not a score; write `word = 0.6` "
                              f"(0 to 1)") from None
        if not 0.0 <= score <= 1.0:
            raise ConfigError(f"{where}:{number}: the score {score} is outside 0 to 1")
        entries[words] = max(score, entries.get(words, 0.0))
    return entries, dropped


class WordListClassifier:
    """Scores a prompt by the highest score of the list entries it contains (0 when none)."""

    name = "words"

    def __init__(self, admin_file: Path | None) -> None:
        self.admin_file = admin_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._list = self._load()

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.admin_file is None:
            return None
        try:
            stat = self.admin_file.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"{self.admin_file}: cannot read the word list (PROMPTDEX_SAFETY__WORDS_FILE): "
                              f"{exc.strerror or exc}") from exc
        return stat.st_mtime_ns, stat.st_size

    def _load(self) -> _List:
        shipped = SHIPPED.read_text(encoding="utf-8")
        entries, _ = parse_list(shipped, str(SHIPPED))
        admin = ""
        self._stamp = self._file_stamp()
        if self._stamp is not None and self.admin_file is not None:
            try:
                admin = self.admin_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{self.admin_file}: cannot read the word list (PROMPTDEX_SAFETY__WORDS_FILE): "
                                  f"{exc}") from exc
            added, dropped = parse_list(admin, str(self.admin_file))
            for words in dropped:
                entries.pop(words, None)
            entries.update(added)
        digest = hashlib.sha256(
            "\n".join(f"{' '.join(w)}={s}" for w, s in sorted(entries.items())).encode()).hexdigest()[:12]
        return _List(entries, max((len(w) for w in entries), default=0), digest)

    def _current(self) -> _List:
        """The list, read again when the admin file changed (one stat per call: cheap beside the scoring)."""
        if self._file_stamp() != self._stamp:
            with self._lock:
                if self._file_stamp() != self._stamp:
                    self._list = self._load()
                    logger.info("word list reloaded from %s: %d entries", self.admin_file, len(self._list.entries))
        return self._list

    @property
    def key(self) -> str:
        return f"words-{self._current().digest}"

    def matches(self, text: str) -> list[tuple[str, float]]:
        """The entries found in `text` with their scores, in the order they occur."""
        current = self._current()
        words = normalise(text)
        found: list[tuple[str, float]] = []
        for start in range(len(words)):
            for length in range(1, min(current.longest, len(words) - start) + 1):
                phrase = tuple(words[start:start + length])
                score = current.entries.get(phrase)
                if score is not None:
                    found.append((" ".join(phrase), score))
        return found

    def score_prompt(self, text: str) -> float:
        return max((score for _, score in self.matches(text)), default=0.0)
