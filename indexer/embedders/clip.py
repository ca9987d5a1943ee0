"""open_clip image and text embedder: any model name with a pretrained tag or a local checkpoint, plus a tiny one."""

from __future__ import annotations

import hashlib
import json
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
    MIN_COSINE,
    ExportFailed,
    ExportSpec,
    OnnxSession,
    cosines,
    dims,
    ensure_export,
    onnx_twin,
    weights_digest,
)
from promptdex.errors import ConfigError

logger = logging.getLogger(__name__)

TINY_CLIP_NAME = "promptdex-tiny-clip"  # change the name whenever TINY_CLIP_CONFIG changes
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_SEED = 0


def _trim_ready(model: Any) -> bool:
    """Whether `model` is an open_clip CLIP whose text tower is causal and pools the EOT token (argmax)."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "text_projection")
    return (all(getattr(model, name, None) is not None for name in needed)
            and getattr(model, "text_pool_type", None) == "argmax")


def trimmed(tokens: Any) -> Any:
    """The token rows cut after the batch's last end-of-text token (the highest id, so `argmax` finds it)."""
    return tokens[:, : int(tokens.argmax(-1).max()) + 1]


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """open_clip's `encode_text` on tokens already cut after the batch's last EOT (see `trimmed`).

    The text tower attends causally and pools the EOT token, so the padding after it never reaches the output:
    dropping it gives the same vectors (to float rounding) for a fraction of the work (a 3-word query is 6
    tokens, not 77). Same steps as `CLIP.encode_text`, with the positions and the mask cut to that length.
    """
    import torch

    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _tower(model: Any, forward: Any) -> Any:
    """`forward(model, tensor)` as a torch module holding `model` (torch.onnx.export exports modules)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: Any) -> Any:
            return forward(self.model, inputs)

    return Tower().eval()


# Fixed inputs every runtime is checked on: texts of several lengths (one fills the 77-token context), and images.
CHECK_TEXTS = ("a red fox in fresh snow, watercolor", "cyberpunk city", "a",
               "portrait of an old sailor, " * 12)


def check_images(size: int = 256) -> list[Image.Image]:
    """Deterministic pictures for checking an image tower: gradients, stripes and noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    gradient = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))],
                        axis=-1)
    stripes = np.zeros((size, size, 3), np.float32)
    stripes[:, ::16] = (255, 40, 0)
    noise = rng.integers(0, 256, (size, size + size // 2, 3))
    return [Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)) for a in (gradient, stripes, noise)]


class ClipEmbedder:
    """A loaded open_clip model with its preprocessing and tokenizer; embeds images and texts in batches (torch).

    Text is embedded without the padding after the batch's last end-of-text token (`encode_text_trimmed`), checked
    once against open_clip's full `encode_text`; a model that is not an argmax-pooled causal CLIP, or fails that
    check, is run in full.
    """

    supports_images = True
    runtime = "torch"

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, *, model_id: str, device: str,
                 batch_size: int) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.model_id, self.device, self.batch_size = model_id, device, batch_size
        self.dim = int(getattr(model, "embed_dim", 0) or model.text_projection.shape[1])
        self._trim: bool | None = None

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors:
        import torch

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = [self.preprocess(im.convert("RGB")) for im in images[start:start + self.batch_size]]
            with torch.inference_mode():
                features = self.model.encode_image(torch.stack(batch).to(self.device))
            out[start:start + len(batch)] = features.float().cpu().numpy()
        return l2_normalize(out)

    def embed_text_full(self, texts: Sequence[str]) -> Vectors:
        """open_clip's own `encode_text` on all 77 token positions (the reference the other paths are checked on)."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            with torch.inference_mode():
                features = self.model.encode_text(self.tokenizer(chunk).to(self.device))
            out[start:start + len(chunk)] = features.float().cpu().numpy()
        return l2_normalize(out)

    def _embed_trimmed(self, texts: Sequence[str]) -> Vectors:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            with torch.inference_mode():
                tokens = trimmed(self.tokenizer(chunk)).to(self.device)
                out[start:start + len(chunk)] = encode_text_trimmed(self.model, tokens).float().cpu().numpy()
        return l2_normalize(out)

    def _trim_checked(self) -> bool:
        if self._trim is None:
            self._trim = _trim_ready(self.model)
            if self._trim:
                try:
                    worst = cosines(self.embed_text_full(CHECK_TEXTS), self._embed_trimmed(CHECK_TEXTS)).min()
                    self._trim = bool(worst >= MIN_COSINE)
                except Exception as exc:  # noqa: BLE001 - any surprise means: use the model's own path
                    logger.warning("CLIP text trimming disabled: %s: %s", type(exc).__name__, exc)
                    self._trim = False
            logger.info("CLIP texts are embedded %s", "without padding" if self._trim else "in full")
        return self._trim

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._embed_trimmed(texts) if self._trim_checked() else self.embed_text_full(texts)

    def release(self) -> None:
        """Drop the model (frees memory; the embedder is unusable afterwards)."""
        self.model = None


class OnnxClipEmbedder:
    """open_clip's towers on ONNX Runtime (exports of the torch model, see `runtime`); open_clip's tokenizer and
    preprocessing. Each tower's session is made on first use, so a process that only embeds text (the API
    before its first upload search) or only images (`promptdex index`) holds one tower."""

    supports_images = True
    runtime = "onnx"

    def __init__(self, text: Path, vision: Path, preprocess: Any, tokenizer: Any, *, model_id: str, dim: int,
                 batch_size: int, threads: int) -> None:
        self.paths = {"text": text, "vision": vision}
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.model_id, self.dim, self.batch_size, self.threads = model_id, dim, batch_size, threads
        self._sessions: dict[str, OnnxSession] = {}
        self._lock = threading.Lock()

    def session(self, tower: str) -> OnnxSession:
        found = self._sessions.get(tower)
        if found is None:
            with self._lock:
                found = self._sessions.get(tower)
                if found is None:
                    found = self._sessions[tower] = OnnxSession(self.paths[tower], threads=self.threads)
        return found

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = np.stack([np.asarray(self.preprocess(im.convert("RGB")), dtype=np.float32) for im in chunk])
            out[start:start + len(chunk)] = self.session("vision").run({"pixels": pixels})
        return l2_normalize(out)

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            tokens = np.ascontiguousarray(trimmed(np.asarray(self.tokenizer(chunk), dtype=np.int64)))
            out[start:start + len(chunk)] = self.session("text").run({"tokens": tokens})
        return l2_normalize(out)


def export_clip(torch_embedder: ClipEmbedder, cache_dir: Path, *, threads: int) -> OnnxClipEmbedder:
    """The ONNX Runtime twin of a loaded torch CLIP: both towers exported (or found in `cache_dir`) and checked
    against torch. Raises ExportFailed; the torch model is left to the caller to drop."""
    import torch

    model = torch_embedder.model
    if not _trim_ready(model):
        raise ExportFailed(f"{torch_embedder.model_id}: only argmax-pooled causal open_clip text towers are exported")
    digest = weights_digest(model)
    size = int(getattr(model.visual, "image_size", (224, 224))[0] if isinstance(
        getattr(model.visual, "image_size", None), (tuple, list)) else getattr(model.visual, "image_size", 224))
    context = int(model.positional_embedding.shape[0])
    text_spec = ExportSpec("clip-text", torch_embedder.model_id, digest,
                           {"inputs": ["tokens"], "dynamic": ["batch", "length"], "trimmed": True})
    vision_spec = ExportSpec("clip-vision", torch_embedder.model_id, digest,
                             {"inputs": ["pixels"], "dynamic": ["batch"], "size": size})
    texts = list(CHECK_TEXTS)
    reference_text = torch_embedder.embed_text_full(texts)
    pictures = check_images()
    reference_images = torch_embedder.embed_images(pictures)

    def make_text() -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        example = trimmed(torch_embedder.tokenizer(texts[:2]))
        shapes = dims(["batch", "length"], batch=(1, 4096), length=(2, context))
        return _tower(model, encode_text_trimmed), (example,), {"tokens": {0: shapes["batch"], 1: shapes["length"]}}

    def make_vision() -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        example = torch.stack([torch_embedder.preprocess(p) for p in pictures[:2]])
        batch = dims(["batch"], batch=(1, 4096))["batch"]
        return _tower(model, lambda m, pixels: m.encode_image(pixels)), (example,), {"pixels": {0: batch}}

    def check_text(session: OnnxSession) -> NDArray[np.float64]:
        embedder = OnnxClipEmbedder(Path(), Path(), torch_embedder.preprocess, torch_embedder.tokenizer,
                                    model_id="", dim=torch_embedder.dim, batch_size=len(texts), threads=0)
        embedder._sessions["text"] = session
        one_by_one = np.vstack([embedder.embed_text([t]) for t in texts])
        return np.concatenate([cosines(embedder.embed_text(texts), reference_text),
                               cosines(one_by_one, reference_text)])

    def check_vision(session: OnnxSession) -> NDArray[np.float64]:
        embedder = OnnxClipEmbedder(Path(), Path(), torch_embedder.preprocess, torch_embedder.tokenizer,
                                    model_id="", dim=torch_embedder.dim, batch_size=len(pictures), threads=0)
        embedder._sessions["vision"] = session
        one = np.vstack([embedder.embed_images([p]) for p in pictures])
        return np.concatenate([cosines(embedder.embed_images(pictures), reference_images),
                               cosines(one, reference_images)])

    text = ensure_export(cache_dir, text_spec, make_text, check_text)
    vision = ensure_export(cache_dir, vision_spec, make_vision, check_vision)
    return OnnxClipEmbedder(text, vision, torch_embedder.preprocess, torch_embedder.tokenizer,
                            model_id=torch_embedder.model_id, dim=torch_embedder.dim,
                            batch_size=torch_embedder.batch_size, threads=threads)


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


CLIPEmbedder = ClipEmbedder | OnnxClipEmbedder


def load_clip(name: str, pretrained: str | None, *, device: str = "auto", batch_size: int = 32,
              models_dir: Path | None = None, runtime: str = "torch", onnx_dir: Path | None = None,
              threads: int = 0, strict: bool = False) -> CLIPEmbedder:
    """Load an open_clip model: `pretrained` is a tag (laion2b_s34b_b79k), a checkpoint file, or None (random
    weights from a fixed seed, the same in every process).

    `runtime` "onnx" serves both towers from ONNX Runtime (exported into `onnx_dir` on first use, checked against
    torch) and drops the torch model; when the export fails that is an error with `strict` (RUNTIME=onnx asked
    for it) and a warning otherwise (torch serves). The tiny model (`TINY_CLIP_NAME`) is registered from
    `models_dir` first. Raises ConfigError naming the setting when the name, the tag or the file is not usable.
    """
    embedder = _load_torch_clip(name, pretrained, device=device, batch_size=batch_size, models_dir=models_dir)
    if runtime != "onnx":
        return embedder
    twin: CLIPEmbedder = onnx_twin(embedder, export_clip, onnx_dir, threads=threads, strict=strict, what="CLIP")
    return twin


def _load_torch_clip(name: str, pretrained: str | None, *, device: str, batch_size: int,
                     models_dir: Path | None) -> ClipEmbedder:
    import open_clip
    import torch

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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights (no tag) are the same in every process
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=resolved)
    except Exception as exc:  # noqa: BLE001 - download, file and device failures all become one clear error
        raise ConfigError(f"cannot load open_clip {name} with {tag!r} on {resolved} (offline? set "
                          f"PROMPTDEX_INDEXER__CLIP_PRETRAINED to a checkpoint file, or PROMPTDEX_MODELS=tiny): "
                          f"{type(exc).__name__}: {exc}") from exc
    model.eval()
    logger.info("loaded %s on %s", model_id, resolved)
    return ClipEmbedder(model, preprocess, open_clip.get_tokenizer(name), model_id=model_id, device=resolved,
                        batch_size=batch_size)

