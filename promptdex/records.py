"""Corpus records: what goes into the store (`NewImage`), what comes out (`Image`), and filters."""

from __future__ import annotations

from datetime import datetime
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
