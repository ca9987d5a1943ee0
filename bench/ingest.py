"""Import throughput (the metadata fixtures, copied into a few thousand distinct files) and CLIP image embedding
throughput (full-size ViT-B-32, random weights) on the CPU."""

from __future__ import annotations

import os
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.common import log

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _unique_png(data: bytes, tag: bytes) -> bytes:
    """A private ancillary chunk before IEND: a valid PNG with the same pixels and metadata, another sha256."""
    chunk_type = b"prDx"
    chunk = struct.pack(">I", len(tag)) + chunk_type + tag + struct.pack(">I", zlib.crc32(chunk_type + tag))
    end = data.rfind(b"IEND") - 4
    return data[:end] + chunk + data[end:]


def _unique_jpeg(data: bytes, tag: bytes) -> bytes:
    """A COM segment right after SOI."""
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + data[2:]


def _unique_webp(data: bytes, tag: bytes) -> bytes:
    """Bytes after the RIFF payload (decoders read the RIFF size and stop there)."""
    return data + tag


def unique_copy(data: bytes, suffix: str, n: int) -> bytes:
    tag = f"promptdex-bench-copy-{n:08d}".encode()
    if suffix == ".png":
        return _unique_png(data, tag)
    if suffix in (".jpg", ".jpeg"):
        return _unique_jpeg(data, tag)
    return _unique_webp(data, tag)


def fixture_files(root: Path) -> list[Path]:
    """The fixture images that import without error (the bad_images folder is left out)."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and "bad_images" not in p.parts)


def make_import_folder(fixtures: Path, dest: Path, count: int) -> dict[str, Any]:
    sources = [(p, p.read_bytes()) for p in fixture_files(fixtures)]
    if not sources:
        raise RuntimeError(f"no fixture images under {fixtures}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    total = 0
    for i in range(count):
        path, data = sources[i % len(sources)]
        sub = dest / f"{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        out = unique_copy(data, path.suffix.lower(), i)
        (sub / f"{i:06d}-{path.name}").write_bytes(out)
        total += len(out)
    return {"files": count, "distinct_sources": len(sources), "mib": round(total / 2**20, 1)}


def import_throughput(settings: Any, conn: Any, folder: Path) -> dict[str, Any]:
    from indexer.importer import import_paths

    t0 = time.perf_counter()
    summary = import_paths(conn, settings, [folder], progress=True)
    seconds = time.perf_counter() - t0
    return {"files": summary.files, "imported": summary.imported, "duplicates": summary.duplicates,
            "errors": len(summary.errors), "seconds": round(seconds, 1),
            "images_per_s": round(summary.files / seconds, 1), "workers": os.cpu_count(),
            "baseline": {"what": "Infinite Image Browsing users report 20 minutes to open 200,000 images",
                         "images_per_s": round(200_000 / 1200, 1)}}


def clip_throughput(models_dir: Path, seconds: float = 30.0, batch: int = 32) -> dict[str, Any]:
    """Images per second through open_clip ViT-B-32 (random weights, 224 px) with its preprocessing, on the CPU."""
    import torch

    from indexer.embedders.clip import load_clip

    embedder = load_clip("ViT-B-32", None, device="cpu", batch_size=batch, models_dir=models_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)) for _ in range(batch)]
    embedder.embed_images(images[:4])  # warm up
    done, t0 = 0, time.perf_counter()
    with tqdm(desc="CLIP image embedding", unit="img", file=sys.stderr) as bar:
        while time.perf_counter() - t0 < seconds:
            embedder.embed_images(images)
            done += len(images)
            bar.update(len(images))
    elapsed = time.perf_counter() - t0
    rate = done / elapsed
    log(f"CLIP ViT-B-32 image embedding: {rate:.1f} images/s on CPU ({torch.get_num_threads()} threads)")
    # baseline: one image per model call, what a loop over files without batching does
    single, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds / 3:
        embedder.embed_images(images[single % batch: single % batch + 1])
        single += 1
    single_rate = single / (time.perf_counter() - t1)
    log(f"CLIP ViT-B-32 image embedding, one image per call: {single_rate:.1f} images/s")
    return {"model": "open_clip ViT-B-32 (random weights, 224 px)", "device": "cpu", "batch": batch,
            "threads": torch.get_num_threads(), "images": done, "seconds": round(elapsed, 1),
            "images_per_s": round(rate, 2), "baseline_one_per_call_images_per_s": round(single_rate, 2),
            "gpu": "not lent to this task (no GPU figure)"}
