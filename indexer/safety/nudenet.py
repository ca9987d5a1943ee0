"""NudeNet image classifier (optional extra, AGPL-3.0): the package's own detector, run on a session we configure.

The `nudenet` package ships its detector (`320n.onnx`, a YOLO model of 18 body-part classes) inside the package
folder, so it runs offline. Its `NudeDetector` would open a default ONNX Runtime session on every core; we
open our own (`OnnxSession`: `threads` per call, one inter-op thread; with one thread, no spinning and no arena)
and hand it to the package's detector, so the pre- and post-processing (letterbox to 320, class scores >= 0.2,
NMS at 0.25) are the package's own. An image's score is the highest detection score among `EXPOSED_CLASSES`, 0.0
when there is none; by the package's thresholds a non-zero score is at least 0.25.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexer.embedders.runtime import ExportFailed, OnnxSession
from indexer.safety.base import ClassifierUnavailable
from promptdex.versions import package_versions

logger = logging.getLogger(__name__)

NAME = "nudenet"
MODEL_FILE = "320n.onnx"  # shipped inside the nudenet package folder
INPUT_SIZE = 320  # the resolution the shipped model was trained at (NudeDetector's default)
# The detector's classes that count as explicit: exposed breasts (female), genitalia, anus and buttocks. Covered
# parts, faces, feet, bellies, armpits and male breasts are detected too but do not raise the score.
EXPOSED_CLASSES: tuple[str, ...] = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_EXPOSED",
    "BUTTOCKS_EXPOSED",
)

Detection = dict[str, Any]  # nudenet's own: {"class": str, "score": float, "box": [x, y, w, h]}


@dataclass
class NudeNetClassifier:
    """Scores RGB images by NudeNet's detections of exposed explicit body parts (see `EXPOSED_CLASSES`)."""

    detector: Any = field(repr=False)  # a nudenet.NudeDetector running on our session
    key: str
    name: str = NAME

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        """NudeNet's detections (every class, with boxes in the image's pixels) for each image, in order."""
        return [self.detector.detect(_bgr(image)) for image in images]

    def score_images(self, images: Sequence[Any]) -> list[float]:
        return [score_detections(found) for found in self.detect(images)]


def score_detections(detections: Sequence[Detection]) -> float:
    """The highest score among the detections of `EXPOSED_CLASSES`, 0.0 when there is none; in [0, 1]."""
    scores = [float(d["score"]) for d in detections if d["class"] in EXPOSED_CLASSES]
    return min(1.0, max(0.0, max(scores, default=0.0)))


def _bgr(image: Any) -> NDArray[np.uint8]:
    """A PIL image as the contiguous uint8 BGR array nudenet expects (what cv2.imread gives; alpha dropped)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[:, :, ::-1])


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_nudenet(*, threads: int = 0) -> NudeNetClassifier:
    """NudeNet's detector from its installed package, on an ONNX Runtime session with `threads` intra-op threads
    per call (0: ONNX Runtime's default, every core). ClassifierUnavailable when the package or its model is
    missing or cannot be loaded."""
    try:
        import nudenet
    except ImportError as exc:
        raise ClassifierUnavailable(
            "nudenet: the package is not installed; pip install 'promptdex[nudenet]' (AGPL-3.0) or leave nudenet "
            "out of PROMPTDEX_SAFETY__CLASSIFIERS") from exc
    model = Path(nudenet.__file__).resolve().parent / MODEL_FILE
    if not model.is_file():
        raise ClassifierUnavailable(
            f"nudenet: its model {model} is missing; reinstall it (pip install --force-reinstall "
            f"'promptdex[nudenet]') or leave nudenet out of PROMPTDEX_SAFETY__CLASSIFIERS")
    try:
        session = OnnxSession(model, threads=threads).session
    except ExportFailed as exc:
        raise ClassifierUnavailable(f"nudenet: {exc}; reinstall it (pip install --force-reinstall "
                                    f"'promptdex[nudenet]') or leave nudenet out of "
                                    f"PROMPTDEX_SAFETY__CLASSIFIERS") from exc

    class SessionDetector(nudenet.NudeDetector):
        """NudeDetector on a given session (its own __init__ would open a default one on every core)."""

        def __init__(self, onnx_session: Any, resolution: int) -> None:
            self.onnx_session = onnx_session
            self.input_width = resolution
            self.input_height = resolution
            self.input_name = onnx_session.get_inputs()[0].name

    version = package_versions([NAME])[NAME] or "unknown"
    key = f"{NAME}-{version}-{_sha256(model)[:12]}"
    logger.info("loaded NudeNet %s (%s, %d threads)", version, model, threads)
    return NudeNetClassifier(SessionDetector(session, INPUT_SIZE), key=key)
