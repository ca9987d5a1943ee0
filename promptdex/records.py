"""Corpus records: what goes into the store (`NewImage`), what comes out (`Image`), and filters."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from promptdex.params import GenerationParams


class ClassifierScore(BaseModel):
    """One classifier's score of an image, with the key it was made under (a stale key is scored again)."""

    score: float = Field(ge=0, le=1)
    key: str
    of: Literal["prompt", "image"] = "image"  # what it looked at


class SafetyScore(BaseModel):
    """What the classifiers said about one image."""

    score: float | None = Field(None, ge=0, le=1, description="The highest score (None: nothing scored it yet).")
    by: str | None = Field(None, description="The classifier that gave the highest score.")
    scores: dict[str, ClassifierScore] = Field(default_factory=dict)
    key: str | None = Field(None, description="The classifier set's key once all of them scored it (None: not yet).")

    @property
    def pending(self) -> bool:
        return self.key is None or self.score is None

    def prompt_score(self) -> ClassifierScore | None:
        """The highest score of the prompt classifiers (None: none scored the prompt)."""
        found = [s for s in self.scores.values() if s.of == "prompt"]
        return max(found, key=lambda s: s.score) if found else None


class NewImage(BaseModel):
    """An image to add: its file, its generation parameters and where they came from."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    path: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    format: str
    file_size: int | None = None
    file_mtime: float | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    source: str
    raw_metadata: dict[str, Any] = Field(default_factory=dict)
    sampler_class: str | None = None
    scheduler_config: dict[str, Any] | None = None
    init_image_sha256: str | None = None
    generation: dict[str, Any] | None = None
    created_at: datetime | None = None
    safety: SafetyScore | None = None  # NSFW scores (None: not scored at all)
    provenance: dict[str, Any] | None = None  # C2PA content credentials (None: the file has none)

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source must name where the image came from (e.g. 'generated', 'a1111')")
        return value


class Image(NewImage):
    """A stored image."""

    id: int
    prompt_id: int | None
    created_at: datetime  # type: ignore[assignment]
    imported_at: datetime
    missing: bool = False  # no file holds this content any more: hidden from search, its files answer 410


class ImageLocation(BaseModel):
    """Where an image's file is: its path and file facts, and whether it is marked missing."""

    id: int
    sha256: str
    path: str
    file_size: int | None
    file_mtime: float | None
    missing: bool


class FileStatus(StrEnum):
    """What `promptdex import` found at a path: a new image, content already in the corpus, or a bad file."""

    IMPORTED = "imported"
    DUPLICATE = "duplicate"
    ERROR = "error"


class FileRecord(BaseModel):
    """One path `promptdex import` looked at, with the file facts and the content (image) it held then."""

    path: str
    file_size: int
    file_mtime: float
    sha256: str | None = None
    image_id: int | None = None
    status: FileStatus
    error: str | None = None


class ImageFilter(BaseModel):
    """Filters every search and listing accepts; None means no constraint."""

    model: str | None = None
    sampler: str | None = None
    width: int | None = None
    height: int | None = None
    min_steps: int | None = None
    max_steps: int | None = None
    min_cfg: float | None = None
    max_cfg: float | None = None
    seed: int | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    # safe mode (set from the caller's level by promptdex.safety.restrict, never from query parameters)
    nsfw_below: float | None = None  # hide images scoring at or above this
    nsfw_complete: bool | None = None  # True: hide images not scored by every configured classifier yet

    def is_empty(self, *, besides_safety: bool = False) -> bool:
        """No constraint at all (`besides_safety`: none but the safe-mode bounds, which few images fail)."""
        skip = {"nsfw_below", "nsfw_complete"} if besides_safety else set()
        return all(value is None for name, value in self.model_dump().items() if name not in skip)
