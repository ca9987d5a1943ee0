"""Switching PROMPTDEX_INDEXER__RUNTIME never forces a rebuild: a bundle filled under torch serves under ONNX
Runtime and takes more vectors from it, and the manifest notes which runtimes filled it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from indexer.bundles import read_manifest
from indexer.embedders import Embedders, load_clip, load_sentence_embedder
from indexer.embedders.clip import TINY_CLIP_NAME, build_tiny_clip
from indexer.images import thumbnail_path
from indexer.importer import import_paths
from indexer.indexing import IMAGE_BUNDLE, PROMPT_BUNDLE, run_index
from indexer.keyword import PostgresKeywordIndex
from indexer.service import IndexerService
from tests.integration.test_indexer_pipeline import make_corpus

pytestmark = pytest.mark.integration


def embedders(settings: Any, runtime: str) -> Embedders:
    models, onnx = settings.models_path, Path(os.environ["PROMPTDEX_INDEXER__ONNX_DIR"])
    clip = load_clip(TINY_CLIP_NAME, str(build_tiny_clip(models)), device="cpu", batch_size=4, models_dir=models,
                     runtime=runtime, onnx_dir=onnx, strict=True)
    prompt = load_sentence_embedder("all-MiniLM-L6-v2", device="cpu", runtime=runtime, onnx_dir=onnx, strict=True)
    assert clip.runtime == prompt.runtime == runtime
    return Embedders(clip=clip, prompt=prompt)


def test_a_bundle_filled_under_torch_is_served_and_extended_under_onnx(settings: Any, db: Any, conn: Any,
                                                                      tmp_path: Path) -> None:
    from PIL import Image

    make_corpus(tmp_path / "corpus", 12)
    import_paths(conn, settings, [tmp_path / "corpus"], progress=False)
    keyword = PostgresKeywordIndex(lambda: db.connect(autocommit=True))
    on_torch, on_onnx = embedders(settings, "torch"), embedders(settings, "onnx")
    report = run_index(conn, settings, on_torch, keyword, progress=False)
    assert [b.added for b in report.bundles] == [12, 12]  # 12 images of 12 distinct prompts
    for name in (IMAGE_BUNDLE, PROMPT_BUNDLE):
        manifest = read_manifest(settings.indexes_path / name)
        assert manifest is not None and manifest.runtimes == ["torch"]

    service = IndexerService(settings, on_onnx, keyword)  # same model ids: no IndexMismatch, no rebuild
    rows = conn.execute("SELECT id, sha256 FROM images ORDER BY id").fetchall()
    for row in rows[:4]:  # an image embedded on ONNX Runtime finds its torch-made vector first
        with Image.open(thumbnail_path(settings.thumbs_path, row["sha256"])) as thumb:
            vector = service.embed_images([thumb.convert("RGB")])
        ids, scores = service.search_images(vector, 1)
        assert int(ids[0]) == row["id"] and float(scores[0]) > 0.9999
    prompt = conn.execute("SELECT id, text FROM prompts ORDER BY id LIMIT 1").fetchone()
    ids, scores = service.search_prompts(service.embed_prompts([prompt["text"]]), 1)
    assert int(ids[0]) == prompt["id"] and float(scores[0]) > 0.9999

    make_corpus(tmp_path / "more", 3, start=12)
    import_paths(conn, settings, [tmp_path / "more"], progress=False)
    report = run_index(conn, settings, on_onnx, keyword, progress=False)
    assert [b.added for b in report.bundles][0] == 3
    image_manifest = read_manifest(settings.indexes_path / IMAGE_BUNDLE)
    assert image_manifest is not None and image_manifest.runtimes == ["onnx", "torch"]
    assert image_manifest.count == 15
