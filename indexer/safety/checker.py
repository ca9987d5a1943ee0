"""Stable Diffusion's safety checker (diffusers' StableDiffusionSafetyChecker) as an image classifier.

The checker embeds an image with its CLIP vision tower and compares it (cosine) with 17 concept and 3
"special care" embeddings, each with its own threshold (weight). Its margin for a concept is cosine - weight,
plus 0.01 for every concept when any special-care margin is above 0; it flags an image when any concept margin is
above 0. We compute the same quantities as its `forward_onnx` and score an image by its largest concept margin m:
score = 1 / (1 + exp(-50 m)), so score > 0.5 is exactly the checker's own decision (m > 0), and a margin of
+-0.05 gives about 0.92 / 0.08. (`forward` rounds the margins to 3 decimals first, so it can differ from
`forward_onnx`, and from us, for margins within 0.0005 of 0.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.embedders.base import resolve_device
from indexer.embedders.runtime import weights_digest
from indexer.safety.base import ClassifierUnavailable

logger = logging.getLogger(__name__)

NAME = "sd-checker"
SETTING = "PROMPTDEX_SAFETY__CHECKER_PATH"
MARGIN_SCALE = 50.0  # score = sigmoid(MARGIN_SCALE * margin)
SPECIAL_CARE_ADJUSTMENT = 0.01  # added to every concept margin when a special-care margin is above 0 (diffusers')
SIBLING_PREPROCESSOR = "feature_extractor"  # where a Stable Diffusion model folder keeps the checker's preprocessor


@dataclass
class SafetyCheckerClassifier:
    """Scores RGB images by the safety checker's largest concept margin (see the module docstring)."""

    model: Any = field(repr=False)  # a StableDiffusionSafetyChecker, in eval mode on `device`
    processor: Any = field(repr=False)  # its CLIPImageProcessor
    key: str
    device: str = "cpu"
    batch_size: int = 16
    name: str = NAME

    def margins(self, images: Sequence[Any]) -> list[float]:
        """Each image's largest concept margin (the checker flags it when above 0), in order."""
        found: list[float] = []
        for start in range(0, len(images), self.batch_size):
            batch = [image if image.mode == "RGB" else image.convert("RGB")
                     for image in images[start:start + self.batch_size]]
            found.extend(self.margins_of(self.pixels(batch)))
        return found

    def score_images(self, images: Sequence[Any]) -> list[float]:
        return [margin_score(m) for m in self.margins(images)]

    def pixels(self, images: Sequence[Any]) -> Any:
        """The checker's input tensor (`clip_input`) for RGB images, on the model's device and dtype."""
        pixel_values = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixel_values.to(self.device, dtype=self.model.dtype)

    def margins_of(self, clip_input: Any) -> list[float]:
        """The largest concept margin of each row of a preprocessed batch: `forward_onnx`'s quantities."""
        import torch

        model = self.model
        with torch.no_grad():
            pooled = model.vision_model(clip_input)[1]
            embeds = torch.nn.functional.normalize(model.visual_projection(pooled).float())
            special = embeds @ torch.nn.functional.normalize(model.special_care_embeds.float()).T
            special_margins = special - model.special_care_embeds_weights.float()
            adjustment = (special_margins > 0).any(dim=1, keepdim=True).float() * SPECIAL_CARE_ADJUSTMENT
            concept = embeds @ torch.nn.functional.normalize(model.concept_embeds.float()).T
            concept_margins = concept - model.concept_embeds_weights.float() + adjustment
            return [float(m) for m in concept_margins.max(dim=1).values.cpu()]


def margin_score(margin: float) -> float:
    """sigmoid(MARGIN_SCALE * margin), in [0, 1]; above 0.5 exactly when the margin is above 0 (float64)."""
    x = MARGIN_SCALE * margin
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)  # no overflow either way
    return e / (1.0 + e)


def _load_processor(path: str) -> Any:
    """The CLIPImageProcessor in `path`, else in the sibling `feature_extractor` folder (a Stable Diffusion model's
    layout); raises the first folder's error when neither has one."""
    from transformers import CLIPImageProcessor

    try:
        return CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure: try the sibling folder, else report this one
        sibling = Path(path).parent / SIBLING_PREPROCESSOR
        if not (sibling / "preprocessor_config.json").is_file():
            raise
        logger.debug("%s has no preprocessor config (%s); using %s", path, exc, sibling)
        return CLIPImageProcessor.from_pretrained(str(sibling), local_files_only=True)


def _key(model: Any, processor: Any) -> str:
    """The name plus a digest of the weights and the preprocessing: what decides the scores."""
    digest = hashlib.sha256(weights_digest(model).encode())
    digest.update(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
    return f"{NAME}-{digest.hexdigest()[:12]}"


def load_safety_checker(path: str, *, device: str = "cpu", threads: int = 0) -> SafetyCheckerClassifier:
    """The StableDiffusionSafetyChecker in `path` (a folder, or a hub id already in the cache: loaded offline) with
    its CLIPImageProcessor (in `path` or in `../feature_extractor`), float32 on `device` ("auto" allowed).

    `threads` > 0 sets torch's intra-op threads, which is process-wide: callers that already set them pass 0.
    ClassifierUnavailable, naming PROMPTDEX_SAFETY__CHECKER_PATH, the path and the cause, when either cannot load.
    """
    try:
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    except ImportError as exc:
        raise ClassifierUnavailable(f"{NAME}: {SETTING} is set, but torch and diffusers are not installed "
                                    f"(pip install 'promptdex[ml]'), or unset it: {exc}") from exc
    resolved = resolve_device(device)
    local = Path(path).expanduser()
    if not local.exists() and (local.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1):
        raise ClassifierUnavailable(f"{NAME}: {SETTING}={path!r}: no such folder (and not a hub id, owner/name); "
                                    f"point it at a StableDiffusionSafetyChecker folder, or unset it")
    if local.exists():
        path = str(local)
    try:
        model: Any = StableDiffusionSafetyChecker.from_pretrained(path, local_files_only=True)
        processor = _load_processor(path)
        model = model.to(resolved, dtype=torch.float32).eval()
    except Exception as exc:  # noqa: BLE001 - missing folder, no weights, damaged files, unknown device...
        raise ClassifierUnavailable(
            f"{NAME}: cannot load a StableDiffusionSafetyChecker with its preprocessor_config.json from {SETTING}="
            f"{path!r} (device {resolved}): {type(exc).__name__}: {exc}") from exc
    if threads > 0:
        torch.set_num_threads(threads)
    key = _key(model, processor)
    logger.info("loaded the safety checker from %s on %s (%s)", path, resolved, key)
    return SafetyCheckerClassifier(model, processor, key=key, device=resolved)
