"""The compact bundle layout setting, the training count a manifest records and the 4x growth check, old manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from indexer.bundles import COMPACT_FACTORY, MANIFEST, RETRAIN_GROWTH, Bundle, layout_factory, outgrown, read_manifest
from indexer.embedders.base import l2_normalize
from promptdex.settings import BundleLayout, IndexerSettings

DIM = 512
N = 5_000


def clustered(n: int, seed: int, centers: int = 60) -> np.ndarray:
    """Unit vectors around random directions, with a decaying spectrum (embeddings are far from isotropic)."""
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(DIM)) ** -0.5
    middle = np.random.default_rng(0).normal(size=(centers, DIM)) * scale
    return l2_normalize(middle[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, DIM)) * scale)


def built(path: Path, factory: str, data: np.ndarray) -> tuple[Bundle, int]:
    bundle = Bundle.create(path, name="b", kind="image", model="m", dim=DIM)
    bundle.add(data, np.arange(1, len(data) + 1), exact_threshold=len(data) - 1, approx_factory=factory)
    bundle.save()
    return bundle, sum(f.stat().st_size for f in path.iterdir())


def test_the_standard_layout_is_the_default_and_the_configured_factory() -> None:
    s = IndexerSettings()
    assert s.bundle_layout == BundleLayout.STANDARD and layout_factory(s.bundle_layout, "X") == "X"
    assert layout_factory(BundleLayout.COMPACT, "X") == COMPACT_FACTORY
    assert IndexerSettings(bundle_layout="compact").bundle_layout == BundleLayout.COMPACT


def test_a_bundle_is_outgrown_past_four_times_its_training_count(tmp_path: Path) -> None:
    data = clustered(4000, seed=3)
    bundle = Bundle.create(tmp_path / "b", name="b", kind="image", model="m", dim=DIM)
    bundle.add(data[:2000], np.arange(1, 2001))
    assert not outgrown(bundle.manifest, 10**9)  # exact bundles have nothing to retrain
    bundle.make_approximate("IVF{nlist},Flat")
    assert bundle.manifest.trained_count == 2000
    bundle.add(data[2000:], np.arange(2001, 4001))
    bundle.save()
    manifest = read_manifest(tmp_path / "b")
    assert manifest is not None and manifest.trained_count == 2000 and manifest.count == 4000
    assert not outgrown(manifest, RETRAIN_GROWTH * 2000) and outgrown(manifest, RETRAIN_GROWTH * 2000 + 1)


def test_an_older_manifest_without_a_training_count_loads_and_is_never_outgrown(tmp_path: Path) -> None:
    data = clustered(2000, seed=4)
    bundle = Bundle.create(tmp_path / "b", name="b", kind="image", model="m", dim=DIM)
    bundle.add(data, np.arange(1, 2001), exact_threshold=1000, approx_factory="IVF{nlist},Flat")
    bundle.save()
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    del manifest["trained_count"]
    (tmp_path / "b" / MANIFEST).write_text(json.dumps(manifest))
    opened = Bundle.open(tmp_path / "b", model="m")
    assert opened.count == 2000 and opened.manifest.trained_count == 0
    assert not outgrown(opened.manifest, 10**9)
