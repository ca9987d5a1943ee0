"""FAISS bundles: ids are database ids, saves are atomic, loads work in memory and memory-mapped, recall holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from indexer.bundles import MANIFEST, Bundle, read_manifest
from indexer.embedders.base import l2_normalize
from indexer.service import BundleHandle
from promptdex.errors import IndexMismatch, IndexMissing, InvalidInput, PromptdexError

DIM = 32


def clustered(n: int, seed: int = 0, centers: int = 50) -> np.ndarray:
    """Unit vectors around `centers` random directions: data with structure, like embeddings have."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, DIM))
    return l2_normalize(middle[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, DIM)))


def new_bundle(path: Path, model: str = "test-model") -> Bundle:
    return Bundle.create(path, name="b", kind="image", model=model, dim=DIM)


def test_round_trip_in_memory_and_memory_mapped(tmp_path: Path) -> None:
    vectors = clustered(300)
    ids = np.arange(300, dtype=np.int64) * 7 + 1000  # database ids, not row positions
    bundle = new_bundle(tmp_path / "b")
    bundle.add(vectors, ids)
    bundle.save()
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert {"name", "kind", "model", "dim", "metric", "count", "built_at", "updated_at", "versions"} <= set(manifest)
    assert (manifest["model"], manifest["dim"], manifest["count"], manifest["index_type"]) == (
        "test-model", DIM, 300, "flat")
    assert {"faiss", "numpy", "python"} <= set(manifest["versions"])
    for mmap in (False, True):
        loaded = Bundle.open(tmp_path / "b", model="test-model", mmap=mmap)
        assert sorted(loaded.ids().tolist()) == sorted(ids.tolist())
        found, scores = loaded.search(vectors[17], 5)
        assert found[0] == ids[17] and scores[0] == pytest.approx(1.0, abs=1e-5)
        assert np.all(np.diff(scores) <= 1e-6)
    with pytest.raises(PromptdexError, match="read-only"):
        Bundle.open(tmp_path / "b", mmap=True).add(vectors[:1], [1])


def test_incremental_add_across_saves_keeps_every_id_once(tmp_path: Path) -> None:
    vectors = clustered(100)
    bundle = new_bundle(tmp_path / "b")
    bundle.add(vectors[:60], list(range(1, 61)))
    bundle.save()
    again = Bundle.open(tmp_path / "b", model="test-model")
    again.add(vectors[60:], list(range(61, 101)))
    again.save()
    final = Bundle.open(tmp_path / "b")
    assert sorted(final.ids().tolist()) == list(range(1, 101)) and final.manifest.generation == 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["index-000002.faiss", MANIFEST]
    assert final.remove([5, 6]) == 2 and final.count == 98


def test_approximate_index_recall_against_exact_on_synthetic_data(tmp_path: Path) -> None:
    data, queries = clustered(6000, seed=1), clustered(200, seed=2)
    ids = np.arange(6000, dtype=np.int64) + 1
    exact = new_bundle(tmp_path / "exact")
    exact.add(data, ids)
    approx = new_bundle(tmp_path / "approx")
    approx.add(data[:1000], ids[:1000], exact_threshold=5000)
    assert approx.manifest.index_type == "flat"
    approx.add(data[1000:], ids[1000:], exact_threshold=5000)  # crosses the threshold: becomes IVF
    assert approx.manifest.index_type.startswith("IVF")
    approx.save()
    loaded = Bundle.open(tmp_path / "approx", model="test-model", mmap=True, nprobe=16)
    truth, _ = exact.search_batch(queries, 10)
    found, _ = loaded.search_batch(queries, 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)])
    assert recall >= 0.9, recall


def test_bundle_of_another_model_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    bundle = new_bundle(tmp_path / "b", model="open_clip:ViT-B-32:laion2b_s34b_b79k")
    bundle.add(clustered(3), [1, 2, 3])
    bundle.save()
    with pytest.raises(IndexMismatch, match="built with open_clip:ViT-B-32:laion2b_s34b_b79k.*--rebuild"):
        Bundle.open(tmp_path / "b", model="open_clip:promptdex-tiny-clip:random")
    with pytest.raises(IndexMissing, match="promptdex index"):
        Bundle.open(tmp_path / "nothing")
    with pytest.raises(InvalidInput, match="32-dimensional"):
        bundle.add(np.zeros((1, 8), np.float32), [9])
    with pytest.raises(InvalidInput, match="ids"):
        bundle.add(clustered(2), [9])


def test_interrupted_save_leaves_the_previous_generation_readable(tmp_path: Path) -> None:
    bundle = new_bundle(tmp_path / "b")
    bundle.add(clustered(10), list(range(10)))
    bundle.save()
    # A save killed half-way: a partial index file and a partial manifest, never renamed into place.
    (tmp_path / "b" / ".index-000002.faiss.999.tmp").write_bytes(b"partial")
    (tmp_path / "b" / "index-000002.faiss").write_bytes(b"renamed but manifest not switched")
    (tmp_path / "b" / f".{MANIFEST}.999.tmp").write_text("{")
    loaded = Bundle.open(tmp_path / "b")
    assert loaded.count == 10 and loaded.manifest.index_file == "index-000001.faiss"
    loaded.add(clustered(1, seed=5), [10])
    loaded.save()
    # the next save takes generation 2 again (the orphan was never committed) and clears the leftovers
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["index-000002.faiss", MANIFEST]
    assert Bundle.open(tmp_path / "b").count == 11


def test_manifest_that_disagrees_with_the_index_is_an_error(tmp_path: Path) -> None:
    bundle = new_bundle(tmp_path / "b")
    bundle.add(clustered(4), [1, 2, 3, 4])
    bundle.save()
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    (tmp_path / "b" / MANIFEST).write_text(json.dumps({**manifest, "count": 5}))
    with pytest.raises(PromptdexError, match="manifest says 5"):
        Bundle.open(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_text("not json")
    with pytest.raises(PromptdexError, match="not a bundle manifest"):
        read_manifest(tmp_path / "b")


def test_handle_reloads_when_the_manifest_changes(tmp_path: Path) -> None:
    vectors = clustered(20)
    bundle = new_bundle(tmp_path / "b")
    handle = BundleHandle(tmp_path / "b", model="test-model", mmap=True, check_every=0)
    with pytest.raises(IndexMissing):
        handle.search(vectors[0], 1)
    bundle.add(vectors[:10], list(range(10)))
    bundle.save()
    assert handle.count == 10
    bundle.add(vectors[10:], list(range(10, 20)))
    bundle.save()
    os.utime(tmp_path / "b" / MANIFEST, ns=(1, 1))  # a coarse clock must not hide the change: inode differs too
    found, _ = handle.search(vectors[15], 1)
    assert handle.count == 20 and found.tolist() == [15]
    assert handle.reload_if_changed() is False


def test_empty_bundle_searches_to_nothing(tmp_path: Path) -> None:
    bundle = new_bundle(tmp_path / "b")
    ids, scores = bundle.search(clustered(1)[0], 5)
    assert ids.size == 0 and scores.size == 0
    with pytest.raises(InvalidInput, match="k must be"):
        bundle.search(clustered(1)[0], 0)
