"""Import throughput (the metadata fixtures, copied into a few thousand distinct files) and CLIP image embedding
throughput (full-size ViT-B-32, random weights) on the CPU."""

from __future__ import annotations

import io
import os
import resource
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
    """`count` distinct files (another sha256 each, the same pixels and metadata) cycling through the fixtures."""
    sources = [(p, p.read_bytes()) for p in fixture_files(fixtures)]
    if not sources:
        raise RuntimeError(f"no fixture images under {fixtures}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    total = 0
    formats: dict[str, int] = {}
    for i in range(count):
        path, data = sources[i % len(sources)]
        sub = dest / f"{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        out = unique_copy(data, path.suffix.lower(), i)
        (sub / f"{i:06d}-{path.name}").write_bytes(out)
        total += len(out)
        kind = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
        formats[kind] = formats.get(kind, 0) + 1
    return {"files": count, "distinct_sources": len(sources), "mib": round(total / 2**20, 1), "formats": formats}


def _previous_prepare(path: Path, settings: Any) -> Any:
    """The import's per-file work before issue 15: decode every pixel, read the metadata, write the thumbnail."""
    from indexer import importer
    from indexer.images import ImageRejected, decode_image, temp_dir, thumbnail_of, thumbnail_path, write_atomic
    from indexer.metadata.reader import read_metadata

    try:
        decoded = decode_image(path, max_pixels=settings.indexer.max_image_pixels)
    except ImageRejected:
        return importer.prepare(path, settings)  # the same rejection, by the same words
    result = read_metadata(path, image=decoded.image)
    encoded = io.BytesIO()
    thumbnail_of(decoded.image, size=settings.indexer.thumb_size).save(encoded, "WEBP", quality=82, method=4)
    write_atomic(thumbnail_path(settings.thumbs_path, decoded.sha256), encoded.getvalue(),
                 tmp_dir=temp_dir(settings.thumbs_path))
    warnings = list(result.warnings) + ([result.error] if result.error else [])
    return importer._Prepared(path, decoded.file_size, decoded.file_mtime, image=importer._new_image(decoded, result),
                              warnings=warnings)


def _previous_index_load(settings: Any, row: dict[str, Any]) -> int:
    """What `promptdex index` did per image before: find the thumbnail import wrote, decode it, hash it."""
    from indexer.images import dhash, rgb, thumbnail_path

    thumb = thumbnail_path(settings.thumbs_path, row["sha256"])
    if not thumb.is_file():
        raise RuntimeError(f"{thumb}: the previous import wrote no thumbnail")
    with Image.open(thumb) as opened:
        opened.load()
        return dhash(rgb(opened))


def _index_load(settings: Any, row: dict[str, Any]) -> int:
    """What `promptdex index` does per image now: one reduced decode for thumbnail (written), hash, CLIP input."""
    from indexer.images import index_pixels

    return index_pixels(Path(row["path"]), row["sha256"], settings.thumbs_path, thumb_size=settings.indexer.thumb_size,
                        max_pixels=settings.indexer.max_image_pixels).phash


def _timed_import(settings: Any, conn: Any, folder: Path, prepare: Any = None) -> tuple[Any, float, float, int]:
    """import_paths (with `prepare` as its per-file work, if given); (summary, seconds, CPU seconds of this process and
    its PostgreSQL backend, files decoded)."""
    from indexer import images, importer

    decoded = {"n": 0}
    real_prepare, real_decode = importer.prepare, images.decode_pixels
    prepare = prepare or real_prepare

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decoded["n"] += 1
        return real_decode(*args, **kwargs)

    importer.prepare, importer.decode_pixels, images.decode_pixels = prepare, counting_decode, counting_decode
    backend = int(conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"])
    try:
        t0, cpu0 = time.perf_counter(), _cpu() + _cpu_of(backend)
        summary = importer.import_paths(conn, settings, [folder], progress=True)
        seconds, cpu = time.perf_counter() - t0, _cpu() + _cpu_of(backend) - cpu0
    finally:
        importer.prepare, importer.decode_pixels, images.decode_pixels = real_prepare, real_decode, real_decode
    return summary, seconds, cpu, decoded["n"]


def _cpu() -> float:
    """CPU seconds this process has used (user and system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    """CPU seconds another process on this machine has used (the PostgreSQL backend serving the import); 0 if
    it cannot be read (a server on another machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_index_loading(settings: Any, conn: Any, load: Any) -> dict[str, Any]:
    """Every image row through `load` on one thread per core, as `promptdex index` runs its loads (no CLIP)."""
    from concurrent.futures import ThreadPoolExecutor

    found = conn.execute("SELECT sha256, path FROM images ORDER BY id").fetchall()
    workers = os.cpu_count() or 1
    t0, cpu0 = time.perf_counter(), _cpu()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = list(tqdm(pool.map(lambda row: load(settings, row), found), total=len(found), unit="img",
                           desc="index image loading", file=sys.stderr))
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {"images": len(hashes), "workers": workers, "seconds": round(seconds, 1),
            "images_per_s": round(len(hashes) / seconds, 1), "cpu_ms_per_image": round(1000 * cpu / len(found), 1),
            "hashes": {row["sha256"]: h for row, h in zip(found, hashes, strict=True)}}


def import_throughput(settings: Any, conn: Any, folder: Path) -> dict[str, Any]:
    """`promptdex import` of `folder` now and as before issue 15 (full decode and thumbnail per file), and the
    index's per-image loading now and before (no CLIP), in one run on one machine. The previous pipeline runs
    first into its own thumbnails folder; the corpus tables are emptied between the two."""
    load_before = os.getloadavg()[0]  # other work on the machine slows both pipelines alike
    previous_settings = settings.model_copy(update={"thumbs_dir": settings.thumbs_path.parent / "thumbs-previous"})
    shutil.rmtree(previous_settings.thumbs_path, ignore_errors=True)
    before, before_s, before_cpu, _ = _timed_import(previous_settings, conn, folder, _previous_prepare)
    before_loading = _timed_index_loading(previous_settings, conn, _previous_index_load)
    log(f"previous import: {before.files / before_s:.1f} files/s; its index loading "
        f"{before_loading['images_per_s']} images/s")
    with conn.transaction():
        conn.execute("TRUNCATE images, prompts, imported_files RESTART IDENTITY CASCADE")
    shutil.rmtree(previous_settings.thumbs_path, ignore_errors=True)

    summary, seconds, cpu, decoded = _timed_import(settings, conn, folder)
    loading = _timed_index_loading(settings, conn, _index_load)
    log(f"import: {summary.files / seconds:.1f} files/s ({decoded} files decoded at import); index loading "
        f"{loading['images_per_s']} images/s")
    old_hashes, new_hashes = before_loading.pop("hashes"), loading.pop("hashes")
    distance = [((old_hashes[sha] ^ h) & (2**64 - 1)).bit_count() for sha, h in new_hashes.items()
                if sha in old_hashes]
    both_now = seconds + loading["seconds"]
    both_before = before_s + before_loading["seconds"]
    return {"files": summary.files, "imported": summary.imported, "duplicates": summary.duplicates,
            "errors": len(summary.errors), "seconds": round(seconds, 1),
            "images_per_s": round(summary.files / seconds, 1), "workers": os.cpu_count(),
            "cpu_ms_per_file": round(1000 * cpu / summary.files, 1),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "decoded_at_import": decoded, "thumbnails_at_import": 0,
            "previous": {"what": "full decode, metadata and WebP thumbnail per file at import (before issue 15)",
                         "seconds": round(before_s, 1), "images_per_s": round(before.files / before_s, 1),
                         "cpu_ms_per_file": round(1000 * before_cpu / before.files, 1),
                         "imported": before.imported, "errors": len(before.errors)},
            "index_loading": {**loading, "what": "one decode per image (JPEG at 1/2-1/8 scale): thumbnail written, "
                                                 "perceptual hash, CLIP input; no CLIP"},
            "index_loading_previous": {**before_loading, "what": "the thumbnail written at import decoded again, "
                                                                "perceptual hash; no CLIP"},
            "import_and_index_loading_s": {"now": round(both_now, 1), "previous": round(both_before, 1)},
            "phash_bits_changed": {"max": max(distance, default=0),
                                   "mean": round(sum(distance) / max(len(distance), 1), 3)},
            "baseline": {"what": "Infinite Image Browsing users report 20 minutes to open 200,000 images",
                         "images_per_s": round(200_000 / 1200, 1)}}


def clip_throughput(models_dir: Path, seconds: float = 30.0, batch: int = 32, *, runtime: str = "torch",
                    onnx_dir: Path | None = None) -> dict[str, Any]:
    """Images per second through open_clip ViT-B-32 (random weights, 224 px) with its preprocessing, on the CPU,
    on `runtime` (torch, or onnx: the export cached in `onnx_dir`), every core."""
    import torch

    from indexer.embedders.clip import load_clip

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    embedder = load_clip("ViT-B-32", None, device="cpu", batch_size=batch, models_dir=models_dir, runtime=runtime,
                         onnx_dir=onnx_dir, threads=threads, strict=True)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)) for _ in range(batch)]
    embedder.embed_images(images[:4])  # warm up
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    with tqdm(desc=f"CLIP image embedding ({runtime})", unit="img", file=sys.stderr) as bar:
        while time.perf_counter() - t0 < seconds:
            embedder.embed_images(images)
            done += len(images)
            bar.update(len(images))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    rate = done / elapsed
    log(f"CLIP ViT-B-32 image embedding ({runtime}): {rate:.1f} images/s on CPU ({threads} threads)")
    # baseline: one image per model call, what a loop over files without batching does
    single, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds / 3:
        embedder.embed_images(images[single % batch: single % batch + 1])
        single += 1
    single_rate = single / (time.perf_counter() - t1)
    log(f"CLIP ViT-B-32 image embedding ({runtime}), one image per call: {single_rate:.1f} images/s")
    return {"model": "open_clip ViT-B-32 (random weights, 224 px)", "device": "cpu", "batch": batch,
            "runtime": runtime, "threads": threads, "images": done, "seconds": round(elapsed, 1),
            "images_per_s": round(rate, 2), "cpu_ms_per_image": round(cpu * 1000 / max(done, 1), 1),
            "baseline_one_per_call_images_per_s": round(single_rate, 2),
            "gpu": "not lent to this task (no GPU figure)"}
