"""Embedders behind one protocol: open_clip for images and text, a sentence model for prompts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from indexer.embedders.base import Embedder, Vectors, l2_normalize
from indexer.embedders.clip import (
    TINY_CLIP_NAME,
    CLIPEmbedder,
    ClipEmbedder,
    OnnxClipEmbedder,
    build_tiny_clip,
    load_clip,
)
from indexer.embedders.runtime import resolve_runtime
from indexer.embedders.sentence import OnnxSentenceEmbedder, SentenceEmbedder, load_sentence_embedder
from promptdex.settings import ModelsMode, Runtime, Settings

logger = logging.getLogger(__name__)

__all__ = ["CLIPEmbedder", "ClipEmbedder", "Embedder", "Embedders", "OnnxClipEmbedder", "OnnxSentenceEmbedder",
           "SentenceEmbedder", "TINY_CLIP_NAME", "Vectors", "build_tiny_clip", "clip_from_settings", "l2_normalize",
           "load_clip", "load_embedders", "load_sentence_embedder", "prompt_embedder_from_settings"]


@dataclass
class Embedders:
    """The two embedders an index uses: CLIP (images, and text queries for them) and the prompt embedder."""

    clip: Embedder
    prompt: Embedder


def _runtime(settings: Settings, threads: int) -> dict[str, object]:
    """The runtime arguments of the loaders: which runtime, where exports live, threads, strictness."""
    s = settings.indexer
    if threads > 0 and resolve_runtime(s.runtime, s.device) == "torch":
        import torch

        torch.set_num_threads(threads)
    return {"runtime": resolve_runtime(s.runtime, s.device), "onnx_dir": settings.onnx_path, "threads": threads,
            "strict": s.runtime == Runtime.ONNX}


def clip_from_settings(settings: Settings, *, threads: int = 0, queries: bool = False) -> CLIPEmbedder:
    """The CLIP embedder the settings ask for; PROMPTDEX_MODELS=tiny gives the tiny random one (offline).
    `threads`: per model call (0: every core; the API asks for 1, as it runs requests in parallel).

    `queries`: for the API (text queries, one uploaded image at a time), where ONNX Runtime is faster. Otherwise
    (`promptdex index`: images in batches of BATCH_SIZE) RUNTIME=auto means torch, whose batched image tower is
    faster on a CPU (BENCHMARKS.md, image embedding); RUNTIME=onnx still forces ONNX Runtime."""
    s = settings.indexer
    runtime = _runtime(settings, threads)
    if s.runtime == Runtime.AUTO and not queries:
        runtime["runtime"] = "torch"
    if settings.models == ModelsMode.TINY:
        checkpoint = build_tiny_clip(settings.models_path)
        return load_clip(TINY_CLIP_NAME, str(checkpoint), device=s.device, batch_size=s.batch_size,
                         models_dir=settings.models_path, **runtime)  # type: ignore[arg-type]
    return load_clip(s.clip_model, s.clip_pretrained, device=s.device, batch_size=s.batch_size,
                     models_dir=settings.models_path, **runtime)  # type: ignore[arg-type]


def prompt_embedder_from_settings(settings: Settings, *, threads: int = 0) -> SentenceEmbedder | OnnxSentenceEmbedder:
    """The prompt embedder (the real all-MiniLM-L6-v2 by default, also in tiny mode: it loads offline)."""
    return load_sentence_embedder(settings.indexer.text_model, device=settings.indexer.device,
                                  batch_size=max(settings.indexer.batch_size, 64),
                                  **_runtime(settings, threads))  # type: ignore[arg-type]


def load_embedders(settings: Settings, *, threads: int = 0, queries: bool = False) -> Embedders:
    """Both embedders on the runtime PROMPTDEX_INDEXER__RUNTIME names (exported to ONNX on first use); `queries`:
    for the API (see `clip_from_settings`)."""
    return Embedders(clip=clip_from_settings(settings, threads=threads, queries=queries),
                     prompt=prompt_embedder_from_settings(settings, threads=threads))
