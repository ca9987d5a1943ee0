"""`promptdex index --ray ADDRESS`: the image bundle's embedding as a Ray Data job on a cluster (`promptdex[cluster]`).

The driver is `promptdex index` itself: under its lock, after the same sweep, checksum and model checks, it reads
the image rows the bundle lacks and hands them to Ray Data in blocks of (id, sha256, path). Stage 1, CPU tasks,
decodes each file once with the code of a local run (`_load` -> `index_pixels`: the CLIP input, the perceptual hash,
and the thumbnail, written where a local run writes it); a file that cannot be decoded comes back as a rejected row,
reported and skipped, never fatal. Stage 2, an actor pool of CLIP embedders (`num_gpus=1` each where the cluster has
GPUs, CPU actors otherwise; `--actors N`), turns the CLIP inputs into vectors. The driver takes the results as they
come, keeps one row per id (a block Ray runs again after losing a node may bring an id twice), and writes them as a
local run does: `bundle.add`, the perceptual hashes, the NSFW scores, and a `_commit` (bundle saved, then its ids
recorded) every `checkpoint_every` vectors, so a run killed or stopped anywhere resumes like a local one. The
prompt-text bundle is embedded by the driver (a sentence model on short texts is cheap next to decoding images).

The decode stage reads the image files and writes the thumbnails on the worker nodes: on several machines the
images and thumbnails folders (PROMPTDEX_IMAGES_DIR, PROMPTDEX_THUMBS_DIR) must be shared storage mounted at the
same paths, or PROMPTDEX_STORAGE_URL a store every node reaches; the models folder as well, or the same models on
every node. Tasks are retried and actors restarted by Ray (its defaults for Ray Data: without limit) when a node
is lost. `ray` is imported only here and in `promptdex.cluster`.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from indexer.bundles import Bundle, layout_factory
from indexer.embedders import Embedder
from indexer.images import ImageRejected
from indexer.indexing import (
    IMAGE_BUNDLE,
    AddRows,
    BundleReport,
    BundleSpec,
    Conn,
    IndexStopped,
    _commit,
    _load,
    _pending,
    _store_phashes,
    count_pending,
)
from indexer.safety import get_scorer
from indexer.safety.rescore import score_indexed
from promptdex.cluster import connect, import_ray, portable
from promptdex.errors import ConfigError, IndexMismatch, InvalidInput
from promptdex.settings import Settings

logger = logging.getLogger(__name__)
WINDOW = 50_000  # pending rows one Ray Data job takes (the actors load their model once per window)
# Heap each embedding actor reserves for its model. Also what keeps Ray Data from fusing the decode into the actors
# on a CPU cluster (it fuses stages whose resource requests are the same): decoding stays on its own CPUs.
ACTOR_MEMORY = 1024 * 1024 * 1024
Batch = Mapping[str, Any]


def decode_batch(batch: Batch, *, settings: Settings) -> dict[str, Any]:
    """Stage 1 (a CPU task): the one decode of each row's file, as `promptdex index` does it here. The CLIP input
    travels as raw RGB bytes with its size; `error` says why a file was rejected, `fatal` marks a storage failure
    (a full or read-only thumbnails disk) that stops the run."""
    out: dict[str, list[Any]] = {k: [] for k in ("id", "phash", "pixels", "height", "width", "error", "fatal")}
    for item_id, sha256, path in zip(batch["id"], batch["sha256"], batch["path"], strict=True):
        item = {"id": int(item_id), "sha256": str(sha256), "path": str(path)}
        try:
            loaded: Any = _load(item, settings)
        except IndexStopped as exc:
            loaded = exc
        picture = None if isinstance(loaded, ImageRejected | IndexStopped) else np.asarray(loaded.clip_input)
        out["id"].append(item["id"])
        out["phash"].append(0 if picture is None else int(loaded.phash))
        out["pixels"].append(b"" if picture is None else picture.tobytes())
        out["height"].append(0 if picture is None else picture.shape[0])
        out["width"].append(0 if picture is None else picture.shape[1])
        out["error"].append(str(loaded) if picture is None else "")
        out["fatal"].append(isinstance(loaded, IndexStopped))
    return {"id": np.asarray(out["id"], np.int64), "phash": np.asarray(out["phash"], np.int64),
            "pixels": np.asarray(out["pixels"], dtype=object), "height": np.asarray(out["height"], np.int32),
            "width": np.asarray(out["width"], np.int32), "error": np.asarray(out["error"], dtype=object),
            "fatal": np.asarray(out["fatal"], bool)}


def picture(pixels: bytes, height: int, width: int) -> Image.Image:
    """The CLIP input decoded by stage 1, from its raw RGB bytes."""
    return Image.fromarray(np.frombuffer(pixels, np.uint8).reshape(int(height), int(width), 3), "RGB")


class ClipActor:
    """Stage 2 (a Ray actor): one CLIP embedder, loaded once as `promptdex index` loads it; embeds its batches."""

    def __init__(self, settings: Settings, *, threads: int, keep_pixels: bool) -> None:
        from indexer.embedders import clip_from_settings

        self.embedder = clip_from_settings(settings, threads=threads)
        self.keep_pixels = keep_pixels  # the driver's NSFW classifiers look at the pictures

    def __call__(self, batch: Batch) -> dict[str, Any]:
        n = len(batch["id"])
        ok = [i for i in range(n) if not batch["error"][i] and not batch["fatal"][i]]
        vectors = np.zeros((n, self.embedder.dim), np.float32)
        if ok:
            images = [picture(batch["pixels"][i], batch["height"][i], batch["width"][i]) for i in ok]
            vectors[ok] = self.embedder.embed_images(images)
        result = {key: batch[key] for key in ("id", "phash", "error", "fatal")}
        if self.keep_pixels:
            result.update({key: batch[key] for key in ("pixels", "height", "width")})
        return {**result, "vector": vectors, "model": np.asarray([self.embedder.model_id] * n, dtype=object),
                "runtime": np.asarray([self.embedder.runtime] * n, dtype=object)}


def _plan(ray: Any, settings: Settings, actors: int | None) -> tuple[Settings, int, dict[str, float]]:
    """(the actors' settings, pool size, each actor's resources) for this cluster; a decode task takes 1 CPU."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if settings.indexer.device == "auto":  # the actors' device is the cluster's, not the driver's
        settings = settings.model_copy(update={"indexer": settings.indexer.model_copy(
            update={"device": "cuda" if gpus else "cpu"})})
    if gpus:
        return settings, actors or gpus, {"num_gpus": 1, "num_cpus": 0, "memory": ACTOR_MEMORY}
    if cpus < 2:
        raise ConfigError(f"--ray: the cluster has {cpus} CPU{'s' if cpus != 1 else ''} and no GPU; indexing on it "
                          "needs 2 CPUs at least (one decodes, one embeds)")
    size = actors or max(1, cpus // 2)
    if size >= cpus:
        raise InvalidInput(f"--actors: {size} CPU actors leave none of the cluster's {cpus} CPUs to decode images; "
                           f"accepted: 1 to {cpus - 1}")
    return settings, size, {"num_gpus": 0, "num_cpus": 1, "memory": ACTOR_MEMORY}


def add_rows_on_ray(conn: Conn, settings: Settings, spec: BundleSpec, embedder: Embedder, bundle: Bundle,
                    report: BundleReport, *, rebuild: bool, progress: bool, on_batch: Callable[[int], None] | None,
                    actors: int | None = None) -> list[int]:
    """`_add_rows` for the image bundle, with decoding and embedding on the cluster `connect` joined: embeds the
    rows the bundle lacks into it, commits every `checkpoint_every` vectors, returns the ids added since the last
    commit. Not for a rebuild."""
    if rebuild or spec.kind != "image":
        raise InvalidInput("--ray embeds the image bundle of an update; `--rebuild` runs without --ray")
    ray = import_ray()
    s = settings.indexer
    settings = portable(settings)
    scorer = get_scorer(settings)
    keep_pixels = bool(scorer.images)
    worker_settings, size, actor_resources = _plan(ray, settings, actors)
    ray.data.DataContext.get_current().enable_progress_bars = False
    bar = tqdm(total=count_pending(conn, spec), desc=f"{spec.name} (ray)", unit="item", file=sys.stderr,
               disable=not progress)
    approx = layout_factory(s.bundle_layout, s.approx_factory)
    seen: set[int] = set()
    unsaved: list[int] = []
    repeated = 0
    after = 0
    while items := _pending(conn, spec, after, WINDOW):
        after = int(items[-1]["id"])
        rows = [{"id": int(r["id"]), "sha256": str(r["sha256"]), "path": str(r["path"])} for r in items]
        data = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // s.batch_size)))
        decoded = data.map_batches(decode_batch, fn_kwargs={"settings": worker_settings}, batch_size=s.batch_size,
                                   batch_format="numpy", num_cpus=1)
        embedded = decoded.map_batches(
            ClipActor, fn_constructor_kwargs={"settings": worker_settings, "threads": 0 if actor_resources["num_gpus"]
                                              else 1, "keep_pixels": keep_pixels},
            compute=ray.data.ActorPoolStrategy(size=size), batch_size=s.batch_size, batch_format="numpy",
            **actor_resources)
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            if batch["fatal"].any():
                raise IndexStopped(str(batch["error"][int(np.argmax(batch["fatal"]))]))
            fresh = [i for i, item_id in enumerate(batch["id"]) if int(item_id) not in seen]
            repeated += len(batch["id"]) - len(fresh)
            seen.update(int(batch["id"][i]) for i in fresh)
            for i in fresh:
                if batch["error"][i]:
                    report.skipped.append((int(batch["id"][i]), str(batch["error"][i])))
                    logger.warning("image %s: %s", batch["id"][i], batch["error"][i])
            ok = [i for i in fresh if not batch["error"][i]]
            if ok and {str(m) for m in batch["model"][ok]} != {embedder.model_id}:
                raise IndexMismatch(f"--ray: the cluster's actors embed with {batch['model'][ok[0]]}, but bundle "
                                    f"{spec.name!r} takes vectors of {embedder.model_id}: give every node the same "
                                    "models (PROMPTDEX_MODELS_DIR)")
            ids = [int(batch["id"][i]) for i in ok]
            _store_phashes(conn, ids, [int(batch["phash"][i]) for i in ok])
            pictures = {int(batch["id"][i]): picture(batch["pixels"][i], batch["height"][i], batch["width"][i])
                        if keep_pixels else None for i in ok}
            report.scored += score_indexed(conn, scorer, pictures)
            bundle.add(np.ascontiguousarray(batch["vector"][ok], np.float32), ids, exact_threshold=s.exact_threshold,
                       approx_factory=approx)
            if ids:
                bundle.manifest.note_runtime(str(batch["runtime"][ok[0]]))
            unsaved += ids
            report.added += len(ids)
            bar.update(len(fresh))
            if on_batch is not None:
                on_batch(len(ids))
            if len(unsaved) >= s.checkpoint_every:
                _commit(conn, spec, bundle, unsaved)
                unsaved = []
    bar.close()
    if repeated:
        logger.info("%s: %d rows came back twice from the cluster (retried blocks); kept once", spec.name, repeated)
    return unsaved


def on_cluster(address: str, *, actors: int | None = None) -> dict[str, AddRows]:
    """Join the cluster at `address` (one clear error naming --ray when it does not answer) and return what
    `run_index(add_rows=...)` takes to embed the image bundle on it."""
    connect(address)
    return {IMAGE_BUNDLE: functools.partial(add_rows_on_ray, actors=actors)}
