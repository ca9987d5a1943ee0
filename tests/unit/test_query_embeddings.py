"""The API's query embedding: concurrent queries share model calls, repeated ones come from the cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from search_api.engines import QueryCache, _Batcher, normalise_query


class SlowModel:
    """A stand-in for a model call that costs a fixed time per call (as one query's call nearly does)."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.seconds, self.calls = seconds, []  # type: ignore[var-annotated]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        time.sleep(self.seconds)
        return np.array([[len(t), sum(map(ord, t))] for t in texts], dtype=np.float32)


def submit_all(batcher: _Batcher, texts: list[str]) -> dict[str, np.ndarray]:
    results: dict[str, np.ndarray] = {}
    start = threading.Barrier(len(texts))

    def client(text: str) -> None:
        start.wait()
        results[text] = batcher.submit(text).result(timeout=10)

    threads = [threading.Thread(target=client, args=(t,)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_queries_share_model_calls_and_each_gets_its_own_vector() -> None:
    model = SlowModel()
    batcher = _Batcher(model, "test", max_batch=32, wait=0.005)
    texts = [f"query number {i}" for i in range(16)]
    results = submit_all(batcher, texts)
    for text in texts:  # nobody gets another query's vector
        np.testing.assert_array_equal(results[text], [len(text), sum(map(ord, text))])
    assert batcher.items == 16 and sum(len(c) for c in model.calls) == 16
    assert batcher.items / batcher.batches >= 6, model.calls
    assert batcher.stats()["largest"] >= 6


def test_a_lone_query_waits_only_a_moment_and_batches_are_capped() -> None:
    model = SlowModel(0.0)
    batcher = _Batcher(model, "test", max_batch=4, wait=0.05)
    started = time.perf_counter()
    batcher.submit("alone").result(timeout=5)
    assert time.perf_counter() - started < 0.04  # a tenth of `wait`, not all of it
    submit_all(batcher, [f"q{i}" for i in range(10)])
    assert max(len(c) for c in model.calls) <= 4


def test_a_failing_model_call_fails_every_query_in_it_and_the_next_call_works() -> None:
    calls = {"n": 0}

    def flaky(texts: Sequence[str]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model exploded")
        return np.ones((len(texts), 2), np.float32)

    batcher = _Batcher(flaky, "test", wait=0)
    failed = batcher.submit("first")
    try:
        failed.result(timeout=5)
        raise AssertionError("the failure was not handed to the caller")
    except RuntimeError as exc:
        assert "exploded" in str(exc)
    assert batcher.submit("second").result(timeout=5).shape == (2,)


def test_the_cache_is_an_lru_keyed_by_model_and_normalised_text() -> None:
    cache = QueryCache(2)
    key = ("open_clip:ViT-B-32:x", normalise_query("  Red   FOX ", case_insensitive=True))
    assert key[1] == "red fox" and normalise_query("Red  Fox", case_insensitive=False) == "Red Fox"
    assert cache.get(key) is None
    cache.put(key, np.ones(2, np.float32))
    assert cache.get(("open_clip:ViT-B-32:x", "red fox")) is not None
    assert cache.get(("sentence-transformers:other", "red fox")) is None  # another model's vector is another entry
    cache.put(("m", "b"), np.zeros(2, np.float32))
    cache.put(("m", "c"), np.zeros(2, np.float32))  # evicts the least recently used
    assert cache.get(key) is None and cache.get(("m", "c")) is not None
    stats = cache.stats()
    assert stats["hits"] == 2 and stats["misses"] == 3 and stats["hit_rate"] == 0.4 and stats["entries"] == 2
    off = QueryCache(0)
    off.put(key, np.ones(2, np.float32))
    assert off.get(key) is None
