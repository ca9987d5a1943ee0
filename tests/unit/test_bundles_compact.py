"""The compact bundle layout setting, the training count a manifest records, the 4x growth check and the retrain it
triggers (streamed from the stored codes, committed by the save like any other), old manifests."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from indexer.bundles import COMPACT_FACTORY, MANIFEST, RETRAIN_GROWTH, Bundle, layout_factory, outgrown, read_manifest
from indexer.embedders.base import l2_normalize
from indexer.indexing import BundleReport, retrain_outgrown
from promptdex.errors import PromptdexError
from promptdex.settings import BundleLayout, IndexerSettings, Settings

DIM = 512
N = 5_000
# The retrain tests run at 64 dimensions (the layouts' shapes, scaled down: OPQ training at 512-d takes minutes)
SMALL = 64
STANDARD = "IVF{nlist},PQ{pq}x4fs,Refine(SQ8)"
COMPACT_SMALL = "OPQ8_32,IVF{nlist},PQ8x4fs,Refine(PQ{refine}np)"
PQ_REFINE = "IVF{nlist},PQ8x4fs,Refine(PQ{refine}np)"  # compact without the rotation, whose training is slow


def clustered(n: int, seed: int, centers: int = 60, dim: int = DIM) -> np.ndarray:
    """Unit vectors around random directions, with a decaying spectrum (embeddings are far from isotropic)."""
    rng = np.random.default_rng(seed)
    scale = (1.0 + np.arange(dim)) ** -0.5
    middle = np.random.default_rng(0).normal(size=(centers, dim)) * scale
    return l2_normalize(middle[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, dim)) * scale)


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


def exact_top(data: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(queries @ data.T), axis=1)[:, :k] + 1  # ids are positions + 1


def recall(bundle: Bundle, data: np.ndarray, queries: np.ndarray) -> float:
    truth = exact_top(data, queries)
    found, _ = bundle.search_batch(queries, 10)
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def grown(path: Path, factory: str) -> tuple[Bundle, np.ndarray]:
    """A bundle that turned approximate at 1,000 vectors and then grew past 4x that: outgrown."""
    data = clustered(4_500, seed=5, dim=SMALL)
    bundle = Bundle.create(path, name="b", kind="image", model="m", dim=SMALL)
    for start in range(0, len(data), 500):  # as `promptdex index` adds: a chunk at a time
        bundle.add(data[start:start + 500], np.arange(start + 1, start + 501), exact_threshold=999,
                   approx_factory=factory)
    bundle.save()
    return bundle, data


@pytest.mark.parametrize("factory", [STANDARD, COMPACT_SMALL],
                         ids=["standard", "compact"])
def test_an_outgrown_bundle_retrains_for_its_count_and_keeps_every_id(tmp_path: Path, factory: str) -> None:
    bundle, data = grown(tmp_path / "b", factory)
    assert bundle.manifest.trained_count == 1_000 and outgrown(bundle.manifest, bundle.count)
    queries = data[np.random.default_rng(9).choice(len(data), 200, replace=False)] + 0.02
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    lists_before = faiss.extract_index_ivf(bundle.index).nlist
    bundle.set_nprobe(lists_before)  # every list: what is measured is the codes, not the probing
    before = recall(bundle, data, queries)
    bundle.retrain(factory)
    bundle.save()
    opened = Bundle.open(tmp_path / "b", model="m")
    lists_after = faiss.extract_index_ivf(opened.index).nlist
    # nlist is 2*sqrt(count), at most count/39: 25 lists at 1,000 vectors, 115 at 4,500
    assert (lists_before, lists_after) == (25, 115)
    assert opened.manifest.trained_count == 4_500 and not outgrown(opened.manifest, opened.count)
    assert opened.manifest.index_type == factory.format(nlist=115, pq=SMALL // 2, refine=SMALL // 4)
    assert sorted(opened.ids().tolist()) == list(range(1, 4_501))
    opened.set_nprobe(lists_after)
    found, _ = opened.search_batch(data[::15], 10)  # every 15th vector finds itself among its 10 nearest
    assert np.mean([i in row for i, row in zip(range(1, 4_501, 15), found.tolist(), strict=True)]) >= 0.9
    assert recall(opened, data, queries) >= min(0.85, before - 0.05)


def test_a_retrain_decodes_and_adds_a_chunk_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, _ = grown(tmp_path / "b", STANDARD)
    sizes: list[int] = []
    add = faiss.IndexIDMap2.add_with_ids
    monkeypatch.setattr(faiss.IndexIDMap2, "add_with_ids",
                        lambda self, x, ids: (sizes.append(len(x)), add(self, x, ids)))
    bundle.retrain(STANDARD, chunk=1_000)
    assert sizes == [1_000] * 4 + [500]


def test_a_retrain_whose_save_fails_leaves_the_old_generation_serving(tmp_path: Path) -> None:
    bundle, _ = grown(tmp_path / "b", PQ_REFINE)
    old = read_manifest(tmp_path / "b")
    assert old is not None
    bundle.retrain(PQ_REFINE)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a real write error (EFBIG), as a full disk gives
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(PromptdexError, match="cannot write"):
            bundle.save()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    opened = Bundle.open(tmp_path / "b", model="m")
    assert opened.manifest == old and opened.manifest.trained_count == 1_000 and opened.count == 4_500
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [old.index_file, MANIFEST]


def test_exact_and_memory_mapped_bundles_are_not_retrained(tmp_path: Path) -> None:
    bundle = Bundle.create(tmp_path / "b", name="b", kind="image", model="m", dim=DIM)
    bundle.add(clustered(100, seed=6), np.arange(1, 101))
    with pytest.raises(PromptdexError, match="exact"):
        bundle.retrain(COMPACT_FACTORY)
    bundle.make_approximate("IVF{nlist},Flat")
    bundle.save()
    with pytest.raises(PromptdexError, match="read-only"):
        Bundle.open(tmp_path / "b", mmap=True).retrain("IVF{nlist},Flat")


def test_index_retrains_an_outgrown_bundle_with_the_configured_layout(tmp_path: Path) -> None:
    bundle, _ = grown(tmp_path / "b", STANDARD)
    settings = Settings(data_dir=tmp_path, indexer=IndexerSettings(approx_factory=PQ_REFINE))
    report = BundleReport("b")
    assert retrain_outgrown(settings, bundle, report)
    assert bundle.manifest.index_type == PQ_REFINE.format(nlist=115, refine=SMALL // 4)
    assert report.retrained.endswith(bundle.manifest.index_type) and report.trained_on == 1_000
    assert not retrain_outgrown(settings, bundle, BundleReport("b"))  # now trained on what it holds


def test_the_lists_probed_grow_with_the_lists_of_a_retrained_bundle(tmp_path: Path) -> None:
    """NPROBE is a floor; NPROBE_SHARE keeps the same share of the lists searched when a retrain makes more of them
    (the 1M bench: 128 of 916 lists gave recall@10 0.959, 128 of the retrained 2,000 only 0.938)."""
    bundle, _ = grown(tmp_path / "b", STANDARD)
    bundle.retrain(STANDARD)
    bundle.save()

    def probed(**probe: Any) -> int:
        return int(faiss.extract_index_ivf(Bundle.open(tmp_path / "b", model="m", **probe).index).nprobe)

    assert faiss.extract_index_ivf(bundle.index).nlist == 115
    assert probed(nprobe=4) == 4  # no share: NPROBE alone, as before
    assert probed(nprobe=4, nprobe_share=0.125) == 15  # ceil(115 / 8)
    assert probed(nprobe=40, nprobe_share=0.125) == 40  # the floor when it is more
    assert probed(nprobe=500, nprobe_share=0.125) == probed(nprobe=1, nprobe_share=1.0) == 115  # never past nlist
    flat = Bundle.create(tmp_path / "flat", name="f", kind="image", model="m", dim=SMALL)
    flat.add(np.eye(SMALL, dtype=np.float32), list(range(1, SMALL + 1)))
    flat.set_nprobe(8, share=0.5)  # an exact bundle has nothing to probe: no error
    assert flat.search(np.eye(SMALL, dtype=np.float32)[0], 1)[0].tolist() == [1]
