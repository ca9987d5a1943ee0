"""Embedders behind one protocol: open_clip for images and text, a sentence model for prompts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from indexer.embedders.base import Embedder, Vectors, l2_normalize
from indexer.embedders.clip import TINY_CLIP_NAME, ClipEmbedder, build_tiny_clip, load_clip
from indexer.embedders.sentence import SentenceEmbedder, load_sentence_embedder
from promptdex.settings import ModelsMode, Settings

logger = logging.getLogger(__name__)

__all__ = ["ClipEmbedder", "Embedder", "Embedders", "SentenceEmbedder", "TINY_CLIP_NAME", "Vectors",
           "build_tiny_clip", "clip_from_settings", "l2_normalize", "load_clip", "load_embedders",
           "load_sentence_embedder", "prompt_embedder_from_settings"]


@dataclass
class Embedders:
    """The two embedders an index uses: CLIP (images, and text queries for them) and the prompt embedder."""

    clip: Embedder
    prompt: Embedder


def clip_from_settings(settings: Settings) -> ClipEmbedder:
    """The CLIP embedder the settings ask for; PROMPTDEX_MODELS=tiny gives the tiny random one (offline)."""
    s = settings.indexer
    if settings.models == ModelsMode.TINY:
        checkpoint = build_tiny_clip(settings.models_path)
        return load_clip(TINY_CLIP_NAME, str(checkpoint), device=s.device, batch_size=s.batch_size,
                         models_dir=settings.models_path)
    return load_clip(s.clip_model, s.clip_pretrained, device=s.device, batch_size=s.batch_size,
                     models_dir=settings.models_path)


def prompt_embedder_from_settings(settings: Settings) -> SentenceEmbedder:
    """The prompt embedder (the real all-MiniLM-L6-v2 by default, also in tiny mode: it loads offline)."""
    return load_sentence_embedder(settings.indexer.text_model, device=settings.indexer.device,
                                  batch_size=max(settings.indexer.batch_size, 64))


def load_embedders(settings: Settings) -> Embedders:
    return Embedders(clip=clip_from_settings(settings), prompt=prompt_embedder_from_settings(settings))
