"""The embedder protocol every model sits behind, and the vector helpers they share."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from PIL import Image

logger = logging.getLogger(__name__)

Vectors = NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts (and, for CLIP, images) into L2-normalised float32 vectors of `dim` dimensions.

    `model_id` names the weights exactly ("open_clip:ViT-B-32:laion2b_s34b_b79k"); index bundles record it
    and refuse to be searched with vectors from another model.
    """

    model_id: str
    dim: int
    runtime: str  # "torch" or "onnx": what runs it (not part of the model's identity)

    @property
    def supports_images(self) -> bool: ...

    def embed_text(self, texts: Sequence[str]) -> Vectors: ...

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors: ...


def l2_normalize(vectors: NDArray[np.floating]) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.ndim == 1:
        out = out[None, :]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def resolve_device(device: str) -> str:
    """"auto" -> cuda when available, then mps, then cpu; anything else as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
