"""One entry point for every front end: a file in, the shared parameters model and the raw metadata out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.metadata.a1111 import parse_a1111_text, sampler_of
from indexer.metadata.comfy_family import parse_comfy_family
from indexer.metadata.containers import MetadataError, read_stealth_a1111, read_text_chunks
from indexer.metadata.invokeai import is_invokeai, parse_invokeai
from indexer.metadata.json_formats import parse_json_parameters
from indexer.metadata.novelai import is_novelai, parse_novelai
from indexer.metadata.provenance import read_provenance
from indexer.metadata.result import NO_METADATA, Parsed, ReadResult, json_object
from promptdex.params import looks_like_a1111

logger = logging.getLogger(__name__)

# PNG text chunk our generator writes its full JSON record into, next to the A1111 `parameters` text.
RECORD_KEYS = ("promptdex", "promptdex_record", "promptdex-record")
STEALTH_KEY = "stealth_parameters"  # where the A1111 text hidden in pixels goes in `raw`
_LOSSLESS = {".png", ".webp"}


def _record(raw: dict[str, str]) -> Parsed | None:
    """Our generator's PNG: A1111 `parameters` for other tools, plus the full reproducibility record."""
    key = next((k for k in RECORD_KEYS if k in raw), None)
    if key is None:
        return None
    warnings: list[str] = []
    record = json_object(raw[key], f"{key} record", warnings)
    parsed = parse_a1111_text(raw.get("parameters", ""), raw) if raw.get("parameters") else Parsed("unknown")
    if record is None:
        parsed.warnings += warnings or [f"{key}: the record is not a JSON object"]
        return parsed
    parsed.software, parsed.generation = "promptdex", record
    parsed.warnings += warnings
    return parsed


def parse_raw(raw: dict[str, str]) -> Parsed | None:
    """The generation metadata in a file's text chunks, tried front end by front end; None when there is none.

    Broken metadata (bad JSON, a malformed settings line) never raises: it gives warnings and, when nothing
    else could be read, software "unknown".
    """
    warnings: list[str] = []
    readers = (
        _record,
        lambda r: parse_novelai(r) if is_novelai(r) else None,
        lambda r: parse_invokeai(r) if is_invokeai(r) else None,
        lambda r: parse_json_parameters(r, warnings),
        lambda r: parse_comfy_family(r, warnings),
    )
    for reader in readers:
        parsed = reader(raw)
        if parsed is not None:
            parsed.warnings = warnings + parsed.warnings
            return parsed
    text = raw.get("parameters")
    if text is None:
        text = next((v for k, v in raw.items() if k != "parameters" and looks_like_a1111(v)), None)
    if text is not None:
        parsed = parse_a1111_text(text, raw)
        parsed.warnings = warnings + parsed.warnings
        return parsed
    if warnings:
        return Parsed("unknown", warnings=warnings)
    return None


def clean_raw(raw: dict[str, str]) -> dict[str, str]:
    """The raw chunks without NUL characters (PostgreSQL text and JSON cannot hold them)."""
    return {k.replace("\x00", ""): v.replace("\x00", "") for k, v in raw.items()}


def _image_info(path: Path, image: Image.Image | None) -> dict[str, Any] | None:
    try:
        if image is not None:
            return {"width": image.width, "height": image.height, "format": image.format}
        with Image.open(path) as opened:
            return {"width": opened.width, "height": opened.height, "format": opened.format}
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for files it cannot identify
        logger.debug("%s: no image header: %s", path, exc)
        return None


def read_metadata(path: str | Path, *, image: Image.Image | None = None, stealth: bool = True,
                  data: bytes | None = None) -> ReadResult:
    """Read a PNG, JPEG or WebP file's generation metadata, whichever front end wrote it.

    `image` (already decoded) saves decoding again for the A1111 "stealth" check, which only runs on PNG and
    WebP files without text metadata. An unreadable file (empty, truncated container) gives `error`; broken
    metadata gives `warnings`; a file without metadata gives software "none" and empty parameters. `data`: the
    file's bytes already in memory (an archive member); `path` then only names it. C2PA content credentials, when
    the file carries them, go into `provenance` whatever else it holds.
    """
    path = Path(path)
    result = ReadResult(file=str(path))
    if data is None:
        try:
            data = path.read_bytes()
        except OSError:
            data = None  # read_text_chunks says why
    try:
        raw = read_text_chunks(path, data=data)
    except MetadataError as exc:
        result.error = str(exc)
        return result
    result.raw = clean_raw(raw)
    result.image = _image_info(path, image)
    if data is not None:
        result.provenance, warnings = read_provenance(data)
        result.warnings += warnings
    parsed = parse_raw(raw)
    if parsed is None and stealth and path.suffix.lower() in _LOSSLESS:
        try:
            text = read_stealth_a1111(image if image is not None else path)
        except MetadataError as exc:
            result.warnings.append(f"stealth metadata: {exc}")
            text = None
        if text:
            result.raw[STEALTH_KEY] = text.replace("\x00", "")
            parsed = parse_a1111_text(text, raw, what=STEALTH_KEY)
    if parsed is None:
        result.software = NO_METADATA
        for warning in result.warnings:
            logger.warning("%s: %s", path, warning)
        return result
    result.software = parsed.software
    result.params = parsed.params
    result.samplers = parsed.samplers or ([sampler_of(parsed.params)] if parsed.software != "unknown" else [])
    result.metadata = parsed.metadata
    result.warnings += parsed.warnings
    result.generation = parsed.generation
    for warning in result.warnings:
        logger.warning("%s: %s", path, warning)
    return result
