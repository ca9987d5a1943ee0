"""The ONNX Runtime path of the encoders: exports cached in the models dir, vectors equal torch's, the switch."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from indexer.embedders import (
    TINY_CLIP_NAME,
    ClipEmbedder,
    OnnxClipEmbedder,
    OnnxSentenceEmbedder,
    SentenceEmbedder,
    build_tiny_clip,
    load_clip,
    load_embedders,
    load_sentence_embedder,
)
from indexer.embedders import runtime as runtime_mod
from indexer.embedders.clip import CHECK_TEXTS, check_images
from indexer.embedders.runtime import MIN_COSINE, ExportFailed, cosines, onnx_available, resolve_runtime
from promptdex.errors import ConfigError
from promptdex.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
SHARED_ONNX = Path(os.environ["PROMPTDEX_INDEXER__ONNX_DIR"])  # the suite's cache (tests/conftest.py)


def prompts(n: int) -> list[str]:
    lines = [line.strip() for line in (REPO / "data" / "prompts.txt").read_text().splitlines() if line.strip()]
    picked = lines[:: max(1, len(lines) // n)][:n]
    return picked + ["a", "RED fox", "portrait of an old sailor, " * 40, " ".join(lines[:30])]


def both_clips(models: Path, onnx_dir: Path, name: str = TINY_CLIP_NAME,
               pretrained: str | None = "tiny") -> tuple[ClipEmbedder, OnnxClipEmbedder]:
    tag = str(build_tiny_clip(models)) if pretrained == "tiny" else pretrained
    torch_clip = load_clip(name, tag, device="cpu", models_dir=models, runtime="torch")
    onnx_clip = load_clip(name, tag, device="cpu", models_dir=models, runtime="onnx", onnx_dir=onnx_dir, strict=True)
    assert isinstance(torch_clip, ClipEmbedder) and isinstance(onnx_clip, OnnxClipEmbedder)
    return torch_clip, onnx_clip


def assert_same_vectors(onnx_vectors: np.ndarray, torch_vectors: np.ndarray) -> None:
    assert onnx_vectors.shape == torch_vectors.shape and onnx_vectors.dtype == np.float32
    assert cosines(onnx_vectors, torch_vectors).min() >= MIN_COSINE


def test_auto_means_onnx_on_the_cpu_and_torch_on_a_gpu() -> None:
    assert onnx_available()  # installed with promptdex[ml]: the default path is the one the suite tests
    assert resolve_runtime("auto", "cpu") == "onnx"
    assert resolve_runtime("auto", "cuda") == "torch"
    assert resolve_runtime("torch", "cpu") == "torch"
    assert resolve_runtime("onnx", "cpu") == "onnx"
    with pytest.raises(ConfigError, match="PROMPTDEX_INDEXER__RUNTIME=onnx.*PROMPTDEX_INDEXER__DEVICE"):
        resolve_runtime("onnx", "cuda")
    with pytest.raises(ValueError):
        resolve_runtime("tensorrt", "cpu")


def test_tiny_clip_on_onnx_gives_torchs_vectors_and_reuses_its_export(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "onnx"
    with caplog.at_level(logging.INFO, logger="indexer.embedders.runtime"):
        torch_clip, onnx_clip = both_clips(tmp_path / "models", cache)
    assert sum("exporting" in r.message for r in caplog.records) == 2  # both towers, once
    assert onnx_clip.model_id == torch_clip.model_id and onnx_clip.dim == torch_clip.dim == 64
    assert onnx_clip.runtime == "onnx" and torch_clip.runtime == "torch"
    texts = prompts(40)
    assert_same_vectors(onnx_clip.embed_text(texts), torch_clip.embed_text_full(texts))
    one_by_one = np.vstack([onnx_clip.embed_text([t]) for t in texts[:8]])
    assert_same_vectors(one_by_one, torch_clip.embed_text_full(texts[:8]))
    images = check_images(100) + check_images(300)
    assert_same_vectors(onnx_clip.embed_images(images), torch_clip.embed_images(images))
    assert onnx_clip.embed_text([]).shape == (0, 64) and onnx_clip.embed_images([]).shape == (0, 64)
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 2 and all((cache / f / "export.json").is_file() for f in folders)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="indexer.embedders.runtime"):
        again = load_clip(TINY_CLIP_NAME, str(build_tiny_clip(tmp_path / "models")), device="cpu",
                          models_dir=tmp_path / "models", runtime="onnx", onnx_dir=cache)
    assert not any("exporting" in r.message for r in caplog.records)
    assert sorted(p.name for p in cache.iterdir()) == folders
    np.testing.assert_allclose(again.embed_text(texts), onnx_clip.embed_text(texts), atol=1e-6)


def test_a_damaged_or_stale_export_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    models, cache = tmp_path / "models", tmp_path / "onnx"
    torch_clip, _ = both_clips(models, cache)
    text_folder = next(p for p in cache.iterdir() if "clip-text" in p.name)
    model = text_folder / "model.onnx"
    reference = torch_clip.embed_text_full(list(CHECK_TEXTS))
    for damage in ("truncate", "flip"):
        data = bytearray(model.read_bytes())
        if damage == "truncate":
            model.write_bytes(bytes(data[: len(data) // 2]))
        else:
            data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum sees it
            model.write_bytes(bytes(data))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="indexer.embedders.runtime"):
            _, onnx_clip = both_clips(models, cache)
        assert any(str(text_folder) in r.message and "damaged" in r.message for r in caplog.records), damage
        assert_same_vectors(onnx_clip.embed_text(list(CHECK_TEXTS)), reference)
    monkeypatch.setattr(runtime_mod, "EXPORT_FORMAT", runtime_mod.EXPORT_FORMAT + 1)  # e.g. a new promptdex
    _, onnx_clip = both_clips(models, cache)
    assert not text_folder.exists()  # the stale export was removed, a new one made beside it
    assert len([p for p in cache.iterdir() if "clip-text" in p.name]) == 1
    assert_same_vectors(onnx_clip.embed_text(list(CHECK_TEXTS)), reference)


def test_a_failed_export_is_an_error_only_when_onnx_was_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> Path:
        raise ExportFailed("the ONNX export of X gives vectors at cosine 0.9 of torch's")

    monkeypatch.setattr("indexer.embedders.clip.ensure_export", broken)
    checkpoint = str(build_tiny_clip(tmp_path))
    with pytest.raises(ConfigError, match="PROMPTDEX_INDEXER__RUNTIME=onnx.*cosine 0.9.*RUNTIME=torch"):
        load_clip(TINY_CLIP_NAME, checkpoint, device="cpu", models_dir=tmp_path, runtime="onnx",
                  onnx_dir=tmp_path / "onnx", strict=True)
    with caplog.at_level(logging.WARNING):
        fallback = load_clip(TINY_CLIP_NAME, checkpoint, device="cpu", models_dir=tmp_path, runtime="onnx",
                             onnx_dir=tmp_path / "onnx")
    assert isinstance(fallback, ClipEmbedder) and any("runs on torch" in r.message for r in caplog.records)


def test_real_minilm_on_onnx_gives_torchs_vectors() -> None:
    torch_model = load_sentence_embedder("all-MiniLM-L6-v2", device="cpu", runtime="torch")
    onnx_model = load_sentence_embedder("all-MiniLM-L6-v2", device="cpu", runtime="onnx", onnx_dir=SHARED_ONNX,
                                        strict=True)
    assert isinstance(torch_model, SentenceEmbedder) and isinstance(onnx_model, OnnxSentenceEmbedder)
    assert onnx_model.model_id == torch_model.model_id and onnx_model.dim == 384
    texts = prompts(200)  # the long ones run past the model's 256 tokens: both truncate them the same way
    assert_same_vectors(onnx_model.embed_text(texts), torch_model.embed_text(texts))
    assert_same_vectors(np.vstack([onnx_model.embed_text([t]) for t in texts[:20]]), torch_model.embed_text(texts[:20]))
    assert onnx_model.embed_text([]).shape == (0, 384)


def test_full_size_clip_on_onnx_gives_torchs_vectors(tmp_path: Path) -> None:
    """ViT-B-32 at full size (random weights from a fixed seed: the same in every process, so the export is cached)."""
    torch_clip, onnx_clip = both_clips(tmp_path, SHARED_ONNX, name="ViT-B-32", pretrained=None)
    assert onnx_clip.model_id == "open_clip:ViT-B-32:random" and onnx_clip.dim == 512
    texts = prompts(60)
    assert_same_vectors(onnx_clip.embed_text(texts), torch_clip.embed_text_full(texts))
    assert_same_vectors(torch_clip.embed_text(texts), torch_clip.embed_text_full(texts))  # torch's trimmed path
    images = check_images(256) + check_images(500)[:1]
    assert_same_vectors(onnx_clip.embed_images(images), torch_clip.embed_images(images))


def test_the_runtime_setting_switches_both_embedders_and_keeps_their_identity(tmp_path: Path) -> None:
    loaded = {}
    for runtime in ("torch", "onnx", "auto"):
        settings = get_settings(data_dir=tmp_path / "data", models="tiny", indexer={"runtime": runtime})
        loaded[runtime] = load_embedders(settings, queries=True)
    assert {loaded["torch"].clip.runtime, loaded["torch"].prompt.runtime} == {"torch"}
    assert {loaded["onnx"].clip.runtime, loaded["onnx"].prompt.runtime} == {"onnx"}
    assert {loaded["auto"].clip.runtime, loaded["auto"].prompt.runtime} == {"onnx"}  # the API's queries
    # `promptdex index` embeds images in batches, faster on torch: auto keeps CLIP there; onnx still forces it
    indexing = load_embedders(get_settings(data_dir=tmp_path / "data", models="tiny"))
    assert (indexing.clip.runtime, indexing.prompt.runtime) == ("torch", "onnx")
    forced = load_embedders(get_settings(data_dir=tmp_path / "data", models="tiny", indexer={"runtime": "onnx"}))
    assert forced.clip.runtime == "onnx"
    for kind in ("clip", "prompt"):  # the runtime is not part of the model's identity: bundles serve under either
        assert getattr(loaded["torch"], kind).model_id == getattr(loaded["onnx"], kind).model_id
    texts = ["a red fox in the snow", "Cyberpunk city, neon"]
    assert_same_vectors(loaded["onnx"].clip.embed_text(texts), loaded["torch"].clip.embed_text(texts))
    assert_same_vectors(loaded["onnx"].prompt.embed_text(texts), loaded["torch"].prompt.embed_text(texts))
    assert get_settings(data_dir=tmp_path / "data").onnx_path == Path(os.environ["PROMPTDEX_INDEXER__ONNX_DIR"])
