"""The image NSFW classifiers: NudeNet from its package (offline) and a tiny safety checker through the real loader."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from indexer.safety.base import ClassifierUnavailable
from indexer.safety.checker import SETTING, SafetyCheckerClassifier, load_safety_checker, margin_score
from indexer.safety.nudenet import EXPOSED_CLASSES, NudeNetClassifier, load_nudenet, score_detections

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


# --- NudeNet ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nudenet_classifier() -> NudeNetClassifier:
    return load_nudenet(threads=1)


@pytest.fixture(scope="module")
def fixture_images(metadata_fixtures: Path) -> list[tuple[str, Image.Image]]:
    """Every decodable PNG, JPEG and WebP under the shared metadata fixtures (any mode, as decoded)."""
    found = []
    for path in sorted(p for p in metadata_fixtures.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as image:
                image.load()
                found.append((str(path.relative_to(metadata_fixtures)), image.copy()))
        except (UnidentifiedImageError, OSError) as exc:  # the sd-parsers bad_images: not an image at all
            logger.info("skipping %s: %s", path, exc)
    assert len(found) >= 30, f"expected the shared fixtures' images under {metadata_fixtures}, found {len(found)}"
    return found


def test_nudenet_scores_every_fixture_image(nudenet_classifier: NudeNetClassifier,
                                            fixture_images: list[tuple[str, Image.Image]]) -> None:
    names = [name for name, _ in fixture_images]
    scores = nudenet_classifier.score_images([image for _, image in fixture_images])
    assert len(scores) == len(fixture_images)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    summary = ", ".join(f"{name}={score:.3f}" for name, score in zip(names, scores, strict=True))
    logger.info("nudenet on %d fixture images: max %.3f; %s", len(scores), max(scores), summary)


def test_nudenet_score_is_its_best_exposed_detection(nudenet_classifier: NudeNetClassifier,
                                                     fixture_images: list[tuple[str, Image.Image]]) -> None:
    images = [image for _, image in fixture_images[:6]]
    detections = nudenet_classifier.detect(images)
    for found, score in zip(detections, nudenet_classifier.score_images(images), strict=True):
        exposed = [d["score"] for d in found if d["class"] in EXPOSED_CLASSES]
        assert score == (max(exposed) if exposed else 0.0)
    # the order of a batch is kept, and an image's score does not depend on its neighbours
    assert nudenet_classifier.score_images(images[::-1]) == nudenet_classifier.score_images(images)[::-1]


def test_score_detections_takes_only_the_exposed_classes() -> None:
    assert score_detections([]) == 0.0
    assert score_detections([{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]},
                             {"class": "FEET_EXPOSED", "score": 0.8, "box": [0, 0, 1, 1]}]) == 0.0
    assert score_detections([{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]},
                             {"class": "BUTTOCKS_EXPOSED", "score": 0.4, "box": [0, 0, 1, 1]},
                             {"class": "ANUS_EXPOSED", "score": 0.6, "box": [0, 0, 1, 1]}]) == 0.6


def test_nudenet_preprocessing_is_the_packages_own(nudenet_classifier: NudeNetClassifier,
                                                   fixture_images: list[tuple[str, Image.Image]],
                                                   metadata_fixtures: Path) -> None:
    """Our PIL -> BGR conversion gives the package's detections of the file it reads itself (cv2.imread)."""
    import nudenet

    reference = nudenet.NudeDetector()
    checked = 0
    for name, image in fixture_images:
        if image.mode in ("RGB", "RGBA") and min(image.size) > 1:
            assert nudenet_classifier.detect([image])[0] == reference.detect(str(metadata_fixtures / name)), name
            checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_nudenet_session_uses_the_threads_asked_for(nudenet_classifier: NudeNetClassifier) -> None:
    options = nudenet_classifier.detector.onnx_session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_nudenet_key_is_stable(nudenet_classifier: NudeNetClassifier) -> None:
    again = load_nudenet()
    assert again.key == nudenet_classifier.key
    assert nudenet_classifier.key.startswith(f"nudenet-{importlib.metadata.version('nudenet')}-")
    assert nudenet_classifier.name == "nudenet"
    assert len(nudenet_classifier.key.rsplit("-", 1)[1]) == 12


def test_nudenet_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(ClassifierUnavailable, match=r"promptdex\[nudenet\]") as caught:
        load_nudenet()
    assert "PROMPTDEX_SAFETY__CLASSIFIERS" in str(caught.value)


# --- the Stable Diffusion safety checker -------------------------------------------------------------------------


def _tiny_checker() -> Any:
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    return StableDiffusionSafetyChecker(config).eval()


def _tiny_processor() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _test_images() -> list[Image.Image]:
    """Red, blue, noise, a gradient, a checkerboard (48x40: the processor resizes and crops them)."""
    rng = np.random.default_rng(0)
    gradient = np.tile(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], (40, 1, 3))
    board = ((np.indices((40, 48)).sum(0) // 4 % 2) * 255).astype(np.uint8)
    return [Image.new("RGB", (48, 40), (220, 30, 30)), Image.new("RGB", (48, 40), (20, 40, 230)),
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), Image.fromarray(gradient),
            Image.fromarray(board).convert("RGB")]


FLAGGED, SPECIAL = 0, 1  # of _test_images(): flagged by a concept; flagged only through the special-care adjustment


@pytest.fixture(scope="module")
def checker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stable Diffusion style folder: safety_checker/ (tiny random weights) and feature_extractor/.

    Concept 0 is image FLAGGED's embedding at a threshold halfway between 1 and its cosine to the nearest other
    image: only FLAGGED is over it. Concept 1 is image SPECIAL's embedding at 1.005 (margin -0.005), and special-care
    concept 0 is SPECIAL's embedding at the halfway threshold: only SPECIAL triggers it, and its +0.01 lifts
    SPECIAL's concept margin to +0.005. Every other concept is a random direction at threshold 1.
    """
    import torch

    model, processor = _tiny_checker(), _tiny_processor()
    pixels = processor(images=_test_images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeds = torch.nn.functional.normalize(model.visual_projection(model.vision_model(pixels)[1]))
        cos = embeds @ embeds.T
        generator = torch.Generator().manual_seed(1)
        model.concept_embeds.copy_(torch.randn(model.concept_embeds.shape, generator=generator))
        model.special_care_embeds.copy_(torch.randn(model.special_care_embeds.shape, generator=generator))
        model.concept_embeds_weights.fill_(1.0)
        model.special_care_embeds_weights.fill_(1.0)

        def halfway(i: int) -> float:
            nearest = float(torch.cat([cos[i, :i], cos[i, i + 1:]]).max())
            assert nearest < 0.99, "the tiny model's test images must have distinct embeddings"
            return (1.0 + nearest) / 2

        model.concept_embeds[0] = embeds[FLAGGED]
        model.concept_embeds_weights[0] = halfway(FLAGGED)
        model.concept_embeds[1] = embeds[SPECIAL]
        model.concept_embeds_weights[1] = 1.005
        model.special_care_embeds[0] = embeds[SPECIAL]
        model.special_care_embeds_weights[0] = halfway(SPECIAL)
    root = tmp_path_factory.mktemp("sd-model")
    model.save_pretrained(root / "safety_checker")
    processor.save_pretrained(root / "feature_extractor")
    return root


@pytest.fixture(scope="module")
def checker(checker_dir: Path) -> SafetyCheckerClassifier:
    return load_safety_checker(str(checker_dir / "safety_checker"))


def test_checker_scores_agree_with_its_own_decision(checker: SafetyCheckerClassifier) -> None:
    import torch

    images = _test_images()
    scores = checker.score_images(images)
    assert len(scores) == len(images)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[FLAGGED] > 0.5 and scores[SPECIAL] > 0.5
    assert all(s < 0.5 for i, s in enumerate(scores) if i not in (FLAGGED, SPECIAL))
    pixels = checker.pixels(images)
    _, has_nsfw = checker.model.forward(pixels, np.zeros((len(images), 1, 1, 3)))
    assert [s > 0.5 for s in scores] == list(has_nsfw)
    _, has_nsfw_onnx = checker.model.forward_onnx(pixels, torch.zeros(len(images), 1, 1, 3))
    assert [s > 0.5 for s in scores] == has_nsfw_onnx.tolist()


def test_checker_special_care_adds_its_adjustment(checker: SafetyCheckerClassifier) -> None:
    margins = checker.margins(_test_images())
    assert margins[SPECIAL] == pytest.approx(-0.005 + 0.01, abs=1e-4)
    assert checker.score_images([_test_images()[SPECIAL]]) == [pytest.approx(margin_score(0.005), abs=1e-3)]


def test_checker_converts_other_modes_and_batches(checker_dir: Path) -> None:
    small = load_safety_checker(str(checker_dir / "safety_checker"))
    small.batch_size = 2
    images = _test_images()
    rgba = [image.convert("RGBA") for image in images]
    assert small.score_images(rgba) == pytest.approx(small.score_images(images[:2]) + small.score_images(images[2:]))


def test_margin_score() -> None:
    assert margin_score(0.0) == 0.5
    assert margin_score(1e-9) > 0.5 > margin_score(-1e-9)
    assert margin_score(0.05) == pytest.approx(1 / (1 + np.exp(-2.5)))
    assert margin_score(100.0) == 1.0 and margin_score(-100.0) == 0.0


def test_checker_key_is_stable_and_follows_the_weights(checker: SafetyCheckerClassifier, checker_dir: Path,
                                                       tmp_path: Path) -> None:
    assert checker.name == "sd-checker"
    assert checker.key.startswith("sd-checker-") and len(checker.key) == len("sd-checker-") + 12
    assert load_safety_checker(str(checker_dir / "safety_checker")).key == checker.key
    changed = _tiny_checker()
    changed.concept_embeds_weights.data[3] = 0.5
    changed.save_pretrained(tmp_path / "safety_checker")
    _tiny_processor().save_pretrained(tmp_path / "safety_checker")  # the preprocessor in the folder itself
    assert load_safety_checker(str(tmp_path / "safety_checker")).key != checker.key


def test_checker_missing_folder_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "safety_checker"
    with pytest.raises(ClassifierUnavailable, match=SETTING) as caught:
        load_safety_checker(str(missing))
    assert str(missing) in str(caught.value)


def test_checker_folder_without_weights_names_the_setting(tmp_path: Path) -> None:
    folder = tmp_path / "safety_checker"
    _tiny_checker().config.save_pretrained(folder)
    _tiny_processor().save_pretrained(folder)
    with pytest.raises(ClassifierUnavailable, match=SETTING) as caught:
        load_safety_checker(str(folder))
    assert str(folder) in str(caught.value)


def test_checker_without_preprocessor_names_the_setting(tmp_path: Path) -> None:
    folder = tmp_path / "safety_checker"
    _tiny_checker().save_pretrained(folder)
    with pytest.raises(ClassifierUnavailable, match=SETTING):
        load_safety_checker(str(folder))
