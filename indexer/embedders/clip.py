"""open_clip image and text embedder: any model name with a pretrained tag or a local checkpoint, plus a tiny one."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.embedders.base import Vectors, l2_normalize, resolve_device
from promptdex.errors import ConfigError

logger = logging.getLogger(__name__)

TINY_CLIP_NAME = "promptdex-tiny-clip"  # change the name whenever TINY_CLIP_CONFIG changes
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_SEED = 0


class ClipEmbedder:
    """A loaded open_clip model with its preprocessing and tokenizer; embeds images and texts in batches."""

    supports_images = True

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, *, model_id: str, device: str,
                 batch_size: int) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.model_id, self.device, self.batch_size = model_id, device, batch_size
        self.dim = int(getattr(model, "embed_dim", 0) or model.text_projection.shape[1])

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors:
        import torch

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = [self.preprocess(im.convert("RGB")) for im in images[start:start + self.batch_size]]
            with torch.inference_mode():
                features = self.model.encode_image(torch.stack(batch).to(self.device))
            out[start:start + len(batch)] = features.float().cpu().numpy()
        return l2_normalize(out)

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            with torch.inference_mode():
                features = self.model.encode_text(self.tokenizer(chunk).to(self.device))
            out[start:start + len(chunk)] = features.float().cpu().numpy()
        return l2_normalize(out)

    def release(self) -> None:
        """Drop the model (frees memory; the embedder is unusable afterwards)."""
        self.model = None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def register_tiny_clip(models_dir: Path) -> Path:
    """Register the tiny config with open_clip (`add_model_config`); returns the config file."""
    import open_clip

    config = models_dir / "tiny-clip" / f"{TINY_CLIP_NAME}.json"
    if not config.is_file() or json.loads(config.read_text()) != TINY_CLIP_CONFIG:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(TINY_CLIP_CONFIG, indent=1))
    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(config)
    return config


def build_tiny_clip(models_dir: Path) -> Path:
    """The checkpoint of the tiny CLIP: random weights from a fixed seed, written once, then reused."""
    import open_clip
    import torch

    register_tiny_clip(models_dir)
    checkpoint = models_dir / "tiny-clip" / f"{TINY_CLIP_NAME}-seed{TINY_CLIP_SEED}.pt"
    if checkpoint.is_file():
        return checkpoint
    with torch.random.fork_rng():
        torch.manual_seed(TINY_CLIP_SEED)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    tmp = checkpoint.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(checkpoint)
    logger.info("built the tiny CLIP checkpoint %s", checkpoint)
    return checkpoint


def load_clip(name: str, pretrained: str | None, *, device: str = "auto", batch_size: int = 32,
              models_dir: Path | None = None) -> ClipEmbedder:
    """Load an open_clip model: `pretrained` is a tag (laion2b_s34b_b79k), a checkpoint file, or None (random).

    The tiny model (`TINY_CLIP_NAME`) is registered from `models_dir` first. Raises ConfigError naming the
    setting when the name, the tag or the file is not usable.
    """
    import open_clip

    if name == TINY_CLIP_NAME:
        if models_dir is None:
            raise ConfigError("the tiny CLIP model needs a models folder (PROMPTDEX_MODELS_DIR) to live in")
        register_tiny_clip(models_dir)
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        raise ConfigError(f"PROMPTDEX_INDEXER__CLIP_MODEL: {name!r} is not an open_clip model "
                          f"(e.g. ViT-B-32, ViT-L-14; see open_clip.list_models())")
    tag = pretrained or None
    if tag and Path(tag).expanduser().is_file():
        path = Path(tag).expanduser().resolve()
        model_id, tag = f"open_clip:{name}:file-{_file_digest(path)}", str(path)
    elif tag and tag not in (tags := open_clip.list_pretrained_tags_by_model(name)):
        raise ConfigError(f"PROMPTDEX_INDEXER__CLIP_PRETRAINED: {tag!r} is neither a checkpoint file nor a "
                          f"pretrained tag of {name} (tags: {', '.join(tags) or 'none'})")
    else:
        model_id = f"open_clip:{name}:{tag or 'random'}"
    resolved = resolve_device(device)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=resolved)
    except Exception as exc:  # noqa: BLE001 - download, file and device failures all become one clear error
        raise ConfigError(f"cannot load open_clip {name} with {tag!r} on {resolved} (offline? set "
                          f"PROMPTDEX_INDEXER__CLIP_PRETRAINED to a checkpoint file, or PROMPTDEX_MODELS=tiny): "
                          f"{type(exc).__name__}: {exc}") from exc
    model.eval()
    logger.info("loaded %s on %s", model_id, resolved)
    return ClipEmbedder(model, preprocess, open_clip.get_tokenizer(name), model_id=model_id, device=resolved,
                        batch_size=batch_size)

