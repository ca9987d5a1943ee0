"""Make a stored image again from its generation record and say whether the pixels are identical, and if not why."""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from generator.environment import environment_differences, environment_record, torch_threads
from generator.hashing import sha256_bytes
from generator.output import load_input_image, restore_file
from generator.render import RECORD_SCHEMA, render_batch, spec_from_record
from generator.service import ModelCache, encode_rendered, inputs_path
from promptdex.errors import InvalidInput, NotFound
from promptdex.settings import Settings
from promptdex.storage import Storage, remote_storage
from promptdex.store import get_image

logger = logging.getLogger(__name__)


@dataclass
class ReproduceReport:
    """The verdict: `identical` compares pixels; the rest says what differs and where it may come from."""

    image_id: int
    identical: bool
    file_identical: bool
    restored: bool = False
    pixels: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, list[Any]] = field(default_factory=dict)
    model: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.identical:
            how = "restored the missing file" if self.restored else "pixels identical"
            return f"image {self.image_id}: reproduced bit for bit ({how})"
        parts = [f"image {self.image_id}: NOT identical"]
        if self.pixels:
            parts.append(f"{self.pixels.get('differing', '?')} of {self.pixels.get('total', '?')} pixel values "
                         f"differ (largest difference {self.pixels.get('max_abs_diff', '?')})")
        if self.environment:
            parts.append("environment differs: " + "; ".join(f"{k} {v[0]} -> {v[1]}"
                                                              for k, v in self.environment.items()))
        if self.model:
            parts.append("model differs: " + "; ".join(f"{k} {v[0]} -> {v[1]}" for k, v in self.model.items()))
        parts += self.notes
        return "; ".join(parts)


def generation_record(image: Any) -> dict[str, Any]:
    record = image.generation
    if not record or not str(record.get("schema", "")).startswith(RECORD_SCHEMA.rsplit("/", 1)[0]):
        raise InvalidInput(f"image {image.id} has no promptdex generation record (source {image.source!r}); only "
                           "images made by `promptdex generate` can be reproduced")
    return dict(record)


def recorded_device_and_dtype(record: dict[str, Any]) -> tuple[str, str, int | None, list[str]]:
    """The device, dtype and thread count to reproduce with: the recorded ones when this machine has them."""
    import torch

    env = record.get("environment") or {}
    device, dtype, notes = str(env.get("device") or "auto"), str(env.get("dtype") or "auto"), []
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    if not available.get(device, False):
        notes.append(f"recorded device {device!r} is not available here; used auto")
        device = "auto"
        if dtype == "float16":
            dtype = "auto"
    threads = env.get("torch_threads")
    return device, dtype, int(threads) if threads else None, notes


@dataclass
class Rerendered:
    """A record's image made again: the model it was made with, the image, its PNG bytes and the environment."""

    loaded: Any
    image: Any
    data: bytes
    environment: dict[str, Any]


def rerender(record: dict[str, Any], *, settings: Settings, cache: ModelCache,
             threads: int | None = None) -> Rerendered:
    """Make a generation record's image again (no database): load its model (and refiner) through `cache`, render
    its batch with the recorded thread count unless `threads` is given, and encode it as the generator does."""
    from generator.loading import model_args_from_identity

    spec, items, index = spec_from_record(record)
    args = model_args_from_identity(record["model"])
    loaded = cache.get_model(model=args["model"], config=args["config"], revision=args["revision"], vae=args["vae"],
                             refiner=spec.refiner)
    init = None
    if spec.init_image:
        init = load_input_image(spec.init_image, inputs_path=inputs_path(settings), size=(spec.width, spec.height))
    recorded_threads = (record.get("environment") or {}).get("torch_threads")
    with torch_threads(threads or (int(recorded_threads) if recorded_threads else None)):
        rendered = render_batch(loaded, spec, items, init_image=init)[index]
        environment = environment_record(loaded.device, loaded.dtype)
    data, _, _ = encode_rendered(loaded, spec, items, index, rendered.image, environment)
    return Rerendered(loaded, rendered.image, data, environment)


def reproduce_image(conn: Any, settings: Settings, *, image_id: int, cache: ModelCache, threads: int | None = None,
                    restore: bool = True) -> ReproduceReport:
    """Render image `image_id` again with its recorded batch and compare.

    Runs with the recorded torch thread count unless `threads` is given; the device and dtype are the cache's
    (`recorded_device_and_dtype` gives the recorded ones). A missing file is restored when the new bytes match.
    """
    image = get_image(conn, image_id=image_id)
    if image is None:
        raise NotFound(f"image {image_id} is not in the corpus")
    record = generation_record(image)
    again = rerender(record, settings=settings, cache=cache, threads=threads)
    loaded, rendered, data, environment = again.loaded, again.image, again.data, again.environment
    model_diffs = model_differences(record, loaded)
    env_diffs = environment_differences(record.get("environment") or {}, environment)
    report = ReproduceReport(image_id, identical=False, file_identical=sha256_bytes(data) == image.sha256,
                             environment=env_diffs, model=model_diffs)
    remote = None if Path(image.path).is_absolute() else remote_storage(settings, "images")
    stored, where = _stored_bytes(settings, image.path, remote)
    if stored is not None:
        report.pixels = compare_pixels(stored, rendered)
        report.identical = report.pixels["differing"] == 0 and report.pixels["same_size"]
    elif report.file_identical and restore:
        restore_file(images_path=settings.images_path, rel=image.path, data=data, storage=remote)
        report.identical = report.restored = True
    else:
        report.notes.append(f"the stored file {where} is missing" + (
            "" if report.file_identical else " and the new render's bytes differ, so it was not restored"))
    logger.info(report.summary())
    return report


def model_differences(record: dict[str, Any], loaded: Any) -> dict[str, list[Any]]:
    """{part: [recorded, loaded]} for the model's (and the refiner's, as refiner.PART) hash, revision, pipeline."""
    parts = [("", record["model"], loaded.identity)]
    if record.get("refiner"):
        parts.append(("refiner.", record["refiner"].get("model") or {}, loaded.refiner_identity or {}))
    return {f"{prefix}{k}": [old.get(k), new.get(k)] for prefix, old, new in parts
            for k in ("sha256", "revision", "pipeline") if old.get(k) != new.get(k)}


def _stored_bytes(settings: Settings, path: str, remote: Storage | None) -> tuple[bytes | None, str]:
    """The bytes the row's file holds now (None when it is missing) and where it was looked for: the object store
    for a generated image's key when PROMPTDEX_STORAGE_URL is remote (never the local download cache, which would
    hide a deleted object), else the file."""
    if remote is not None:
        try:
            return remote.get(path), f"{remote.name}/{path}"
        except NotFound:
            return None, f"{remote.name}/{path}"
    p = Path(path)
    file = p if p.is_absolute() else settings.images_path / p
    return (file.read_bytes() if file.is_file() else None), str(file)


def compare_pixels(stored_png: bytes, image: Any) -> dict[str, Any]:
    """How two images' RGB values differ: total values, differing values, the largest difference."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(stored_png)) as img:
        old = np.asarray(img.convert("RGB"), dtype=np.int16)
    new = np.asarray(image.convert("RGB"), dtype=np.int16)
    if old.shape != new.shape:
        return {"same_size": False, "total": int(old.size), "differing": int(old.size),
                "max_abs_diff": None, "stored_size": list(old.shape[:2][::-1]), "new_size": list(new.shape[:2][::-1])}
    diff = np.abs(old - new)
    return {"same_size": True, "total": int(diff.size), "differing": int(np.count_nonzero(diff)),
            "max_abs_diff": int(diff.max()) if diff.size else 0}
