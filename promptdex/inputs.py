"""Init images kept for image-to-image: content-addressed files in the inputs folder, written atomically."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from promptdex.settings import Settings


def inputs_path(settings: Settings) -> Path:
    """Where init images are kept (PROMPTDEX_GENERATOR__INPUTS_DIR, default IMAGES_DIR/.inputs)."""
    configured = settings.generator.inputs_dir
    return configured.expanduser().resolve() if configured is not None else settings.images_path / ".inputs"


def keep_input(data: bytes, *, suffix: str, folder: Path) -> str:
    """Keep an init image's bytes as FOLDER/SHA256.SUFFIX (once per content); returns the sha256."""
    sha = hashlib.sha256(data).hexdigest()
    if not any(folder.glob(f"{sha}.*")):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{sha}.{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, folder / f"{sha}{suffix or '.img'}")
        finally:
            tmp.unlink(missing_ok=True)
    return sha
