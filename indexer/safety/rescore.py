"""Scoring stored images: at index time (pixels already decoded) and by `promptdex safety rescore` (resumable).

An image is scored again only by the classifiers whose key changed since it was last scored (a new word list
re-scores prompts, and decodes no pixels); the set's key marks it complete. Rescore walks the images in id order
in committed batches, so a run killed at any point carries on where it stopped and never scores twice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from tqdm import tqdm

from indexer.images import ImageRejected, classifier_pixels
from indexer.safety import Scorer
from promptdex import store
from promptdex.records import ClassifierScore, SafetyScore
from promptdex.settings import Settings
from promptdex.storage import local_image

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
BATCH = 64


@dataclass
class RescoreSummary:
    scored: int = 0
    prompts: int = 0
    flagged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.scored} images scored ({self.flagged} flagged), {self.prompts} prompts, "
                f"{len(self.errors)} errors, {self.seconds:.1f} s")

    def to_json(self) -> dict[str, Any]:
        return {"scored": self.scored, "prompts": self.prompts, "flagged": self.flagged,
                "errors": [{"image_id": i, "error": e} for i, e in self.errors], "seconds": round(self.seconds, 2)}


PixelSource = Callable[[dict[str, Any]], Any]  # a stale row -> its PIL image, or raises ImageRejected


def score_rows(scorer: Scorer, stale: Sequence[dict[str, Any]], pixels: Mapping[int, Any] | PixelSource,
               pool: ThreadPoolExecutor | None = None
               ) -> tuple[list[tuple[int, SafetyScore]], list[tuple[int, float, str]], list[tuple[int, str]]]:
    """New records for rows of `store.stale_safety` (image scores, prompt scores, errors). `pixels`: the decoded
    images by id (index), or a function that decodes a row's file (rescore), called only for rows whose image
    classifiers must run."""
    prompt_key = ",".join(c.key for c in scorer.prompt)
    done: list[tuple[int, SafetyScore]] = []
    prompts: dict[int, tuple[int, float, str]] = {}
    errors: list[tuple[int, str]] = []
    merged: list[dict[str, ClassifierScore]] = []
    need: list[tuple[int, list[str]]] = []  # (position, stale image classifiers)
    for position, row in enumerate(stale):
        scores = {name: ClassifierScore.model_validate(s) for name, s in (row["nsfw_scores"] or {}).items()}
        if scorer.stale_prompts(scores):
            fresh = scorer.prompt_scores(str(row["prompt"]))
            scores.update(fresh)
            if row["prompt_id"] is not None and fresh:
                prompts[int(row["prompt_id"])] = (int(row["prompt_id"]), max(s.score for s in fresh.values()),
                                                  prompt_key)
        merged.append(scores)
        stale_images = scorer.stale_images(scores)
        if stale_images:
            need.append((position, stale_images))
    decoded: dict[int, Any] = {}
    if need:
        rows = [stale[position] for position, _ in need]
        if isinstance(pixels, Mapping):
            found = [pixels.get(int(r["id"]), ImageRejected(f"image {r['id']}: not decoded")) for r in rows]
        else:
            load = pixels
            found = list(pool.map(lambda r: _try(load, r), rows)) if pool else [_try(load, r) for r in rows]
        for (position, _), image in zip(need, found, strict=True):
            if isinstance(image, Exception):
                errors.append((int(stale[position]["id"]), str(image)))
            else:
                decoded[position] = image
        names = sorted({name for _, names in need for name in names})
        order = sorted(decoded)
        for position, scores in zip(order, scorer.image_scores([decoded[p] for p in order], only=names),
                                    strict=True):
            merged[position].update(scores)
    failed = {position for position, _ in need if position not in decoded}
    for position, row in enumerate(stale):
        if position not in failed:
            done.append((int(row["id"]), scorer.combine(merged[position])))
    return done, list(prompts.values()), errors


def _try(load: PixelSource, row: dict[str, Any]) -> Any:
    try:
        return load(row)
    except ImageRejected as exc:
        return exc
    except OSError as exc:
        return ImageRejected(f"image {row['id']}: cannot read {row['path']}: {exc.strerror or exc}")


def score_indexed(conn: Conn, scorer: Scorer, images: Mapping[int, Any]) -> int:
    """Score the images `index` just decoded (by id) that are not scored under the current classifiers."""
    if not images:
        return 0
    stale = store.stale_safety(conn, key=scorer.key, ids=list(images))
    if not stale:
        return 0
    done, prompts, errors = score_rows(scorer, stale, images)
    store.set_safety(conn, scores=done, prompts=prompts)
    for image_id, error in errors:
        logger.warning("image %s: not scored: %s", image_id, error)
    return len(done)


def rescore(conn: Conn, settings: Settings, scorer: Scorer, *, progress: bool = True,
            workers: int | None = None) -> RescoreSummary:
    """Score every image not scored under the configured classifiers, in committed batches of BATCH."""
    started = time.monotonic()
    summary = RescoreSummary()
    key = scorer.key  # loads the image classifiers: a classifier that cannot load stops the run before any work
    total = store.count_stale_safety(conn, key=key)
    max_pixels = settings.indexer.max_image_pixels

    def load(row: dict[str, Any]) -> Any:
        if row["missing"]:
            raise ImageRejected(f"image {row['id']}: no file holds it (marked missing); import it again to score it")
        # a generated image's key in a remote store (PROMPTDEX_STORAGE_URL=s3://) is fetched once into the cache
        return classifier_pixels(local_image(settings, str(row["path"])), max_pixels=max_pixels)

    bar = tqdm(total=total, desc="rescore", unit="image", file=sys.stderr, disable=not progress)
    after = 0
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="rescore") as pool:
        while stale := store.stale_safety(conn, key=key, after_id=after, limit=BATCH):
            after = int(stale[-1]["id"])
            done, prompts, errors = score_rows(scorer, stale, load, pool)
            store.set_safety(conn, scores=done, prompts=prompts)
            summary.scored += len(done)
            summary.prompts += len(prompts)
            summary.flagged += sum(1 for _, s in done if (s.score or 0.0) >= settings.safety.strict_threshold)
            summary.errors.extend(errors)
            for image_id, error in errors:
                logger.warning("image %s: not scored: %s", image_id, error)
            bar.update(len(stale))
    bar.close()
    summary.seconds = time.monotonic() - started
    logger.info("safety rescore: %s", summary.line())
    return summary
