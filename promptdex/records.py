"""Corpus records: what goes into the store (`NewImage`), what comes out (`Image`), and filters."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator

from promptdex.params import GenerationParams


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

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())
