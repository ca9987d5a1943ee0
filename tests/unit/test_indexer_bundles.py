"""FAISS bundles: ids are database ids, saves are atomic, loads work in memory and memory-mapped, recall holds."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
from pathlib import Path

import numpy as np
import pytest

from indexer.bundles import MANIFEST, Bundle, Verify, read_manifest, sweep, verify_bundle
from indexer.embedders.base import l2_normalize
from indexer.service import BundleHandle
from promptdex.errors import IndexCorrupt, IndexMismatch, IndexMissing, InvalidInput, PromptdexError

DIM = 32


def clustered(n: int, seed: int = 0, centers: int = 50) -> np.ndarray:
    """Unit vectors around `centers` random directions: data with structure, like embeddings have."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, DIM))
    return l2_normalize(middle[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, DIM)))


def new_bundle(path: Path, model: str = "test-model") -> Bundle:
    return Bundle.create(path, name="b", kind="image", model=model, dim=DIM)


def saved(path: Path, n: int, seed: int = 0) -> Bundle:
    bundle = new_bundle(path)
    bundle.add(clustered(n, seed=seed), list(range(1, n + 1)))
    bundle.save()
    return bundle


def index_file(path: Path) -> Path:
    manifest = read_manifest(path)
    assert manifest is not None
    return path / manifest.index_file


def assert_for_people(message: str) -> None:
    """A message a person can act on: no FAISS C++ text, no Python repr of an exception."""
    for raw in ("Error in", "faiss::", ".cpp", "Errno", "Traceback", "RuntimeError"):
        assert raw not in message, message


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
    # the next save takes a generation above every file there (never writing over one a reader may have mapped)
    # and clears the leftovers
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["index-000003.faiss", MANIFEST]
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


def test_the_manifest_holds_the_index_files_size_and_sha256(tmp_path: Path) -> None:
    saved(tmp_path / "b", 50)
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    data = index_file(tmp_path / "b").read_bytes()
    assert manifest["index_bytes"] == len(data) and manifest["index_sha256"] == hashlib.sha256(data).hexdigest()
    assert verify_bundle(tmp_path / "b") is not None and verify_bundle(tmp_path / "nothing") is None


@pytest.mark.parametrize("mmap", [False, True])
def test_a_truncated_index_file_is_refused_before_faiss_reads_it(tmp_path: Path, mmap: bool) -> None:
    saved(tmp_path / "b", 50)
    file = index_file(tmp_path / "b")
    os.truncate(file, file.stat().st_size // 2)
    with pytest.raises(IndexCorrupt) as caught:
        Bundle.open(tmp_path / "b", mmap=mmap)
    message = str(caught.value)
    assert str(file) in message and "truncated" in message and "promptdex index --rebuild" in message
    assert_for_people(message)
    with pytest.raises(IndexCorrupt, match="truncated"):
        verify_bundle(tmp_path / "b", mode=Verify.QUICK)


def test_a_changed_byte_is_found_by_the_full_check_and_in_the_sampled_windows_by_the_quick_one(tmp_path: Path) -> None:
    saved(tmp_path / "b", 24_000)  # ~3 MB: larger than what the quick check reads
    file = index_file(tmp_path / "b")
    size = file.stat().st_size
    assert size > 3_000_000
    with file.open("r+b") as handle:  # one byte in the middle of the vectors, away from the sampled windows
        handle.seek(size // 2 + 70_000)
        byte = handle.read(1)
        handle.seek(size // 2 + 70_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IndexCorrupt, match="does not match the sha256 checksum"):
        Bundle.open(tmp_path / "b")  # in memory: the full check
    with file.open("r+b") as handle:  # and one in the header, which the quick check reads
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IndexCorrupt, match="does not match"):
        Bundle.open(tmp_path / "b", mmap=True)


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong types", "path outside"])
def test_a_damaged_manifest_is_refused_naming_it_and_a_save_replaces_it(tmp_path: Path, damage: str) -> None:
    bundle = saved(tmp_path / "b", 20)
    manifest = tmp_path / "b" / MANIFEST
    text = manifest.read_text()
    broken = {"truncated": text[: len(text) // 2], "empty": "",
              "wrong types": text.replace('"dim": 32', '"dim": "32"'),
              "path outside": text.replace('"index_file": "index-000001.faiss"', '"index_file": "../../etc/passwd"')}
    manifest.write_text(broken[damage])
    with pytest.raises(IndexCorrupt) as caught:
        Bundle.open(tmp_path / "b")
    assert str(manifest) in str(caught.value) and "promptdex index --rebuild" in str(caught.value)
    assert_for_people(str(caught.value))
    bundle.add(clustered(1, seed=9), [99])
    bundle.save()  # the commit point replaces the damaged manifest
    assert Bundle.open(tmp_path / "b").count == 21


def test_a_bundle_without_checksum_from_an_older_promptdex_still_opens(tmp_path: Path) -> None:
    saved(tmp_path / "b", 10)
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    old = {k: v for k, v in manifest.items() if not k.startswith("index_") or k in ("index_type", "index_file")}
    (tmp_path / "b" / MANIFEST).write_text(json.dumps({**old, "format": 1}))
    assert Bundle.open(tmp_path / "b", mmap=True).count == 10 and verify_bundle(tmp_path / "b") is not None


def test_a_save_that_cannot_write_leaves_no_temporary_file_and_the_old_generation(tmp_path: Path) -> None:
    bundle = saved(tmp_path / "b", 10)
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    bundle.add(clustered(3000, seed=3), list(range(100, 3100)))  # ~400 KB: over the file size limit below
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a real write error (EFBIG), as a full disk gives
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(PromptdexError) as caught:
            bundle.save()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    message = str(caught.value)
    assert "cannot write" in message and "index-000002.faiss" in message and "free disk space" in message
    assert_for_people(message)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    assert Bundle.open(tmp_path / "b").count == 10
    bundle.save()  # once it can write, the same bundle saves
    assert Bundle.open(tmp_path / "b").count == 3010


def test_sweep_removes_leftovers_of_interrupted_saves_only(tmp_path: Path) -> None:
    saved(tmp_path / "b", 10)
    current = index_file(tmp_path / "b").name
    (tmp_path / "b" / ".index-000002.faiss.4242.tmp").write_bytes(b"partial")
    (tmp_path / "b" / "index-000002.faiss").write_bytes(b"renamed, never committed")
    assert sorted(sweep(tmp_path / "b")) == [".index-000002.faiss.4242.tmp", "index-000002.faiss"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [current, MANIFEST]
    (tmp_path / "b" / MANIFEST).write_text("{")  # damaged: which index file is current is unknown, keep them
    (tmp_path / "b" / ".manifest.json.1.tmp").write_text("{")
    assert sweep(tmp_path / "b") == [".manifest.json.1.tmp"] and (tmp_path / "b" / current).exists()
    assert sweep(tmp_path / "nothing") == []


def test_handle_drops_a_mapped_file_changed_in_place_and_recovers_at_the_next_save(tmp_path: Path) -> None:
    vectors = clustered(40)
    bundle = new_bundle(tmp_path / "b")
    bundle.add(vectors[:20], list(range(20)))
    bundle.save()
    handle = BundleHandle(tmp_path / "b", model="test-model", mmap=True, check_every=0)
    assert handle.search(vectors[3], 1)[0].tolist() == [3]
    file = index_file(tmp_path / "b")
    os.truncate(file, file.stat().st_size - 100)  # a search touching the lost pages would crash the process
    for _ in range(2):
        with pytest.raises(IndexCorrupt, match="changed in place.*promptdex index --rebuild"):
            handle.search(vectors[3], 1)
    assert handle.problem is not None and str(file) in handle.problem
    bundle.add(vectors[20:], list(range(20, 40)))
    bundle.save()  # a new generation: the handle opens it
    assert handle.search(vectors[30], 1)[0].tolist() == [30] and handle.problem is None


def test_handle_keeps_serving_when_a_new_generation_is_damaged(tmp_path: Path) -> None:
    vectors = clustered(20)
    bundle = new_bundle(tmp_path / "b")
    bundle.add(vectors[:10], list(range(10)))
    bundle.save()
    handle = BundleHandle(tmp_path / "b", model="test-model", mmap=True, check_every=0)
    assert handle.count == 10
    (tmp_path / "b" / MANIFEST).write_text('{"name": "b"')  # damaged under the serving handle
    assert handle.search(vectors[4], 1)[0].tolist() == [4]  # the loaded generation still answers
    assert handle.problem is not None and "manifest.json is damaged" in handle.problem
    bundle.add(vectors[10:], list(range(10, 20)))
    bundle.save()
    assert handle.count == 20 and handle.problem is None
