"""A query's embedding: the direct forward pass gives encode()'s vector, or is not used; queries
that arrive together share one forward pass."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from kbqa.storage.embeddings import Embedder, _direct_queries, _load, get_embedder, resolve_model
from tests.waiting import wait_for

QUERIES = ["How long are Harbor backups kept?", "公司的年假有多少天？", "", "word " * 600]


def test_query_vector_is_the_one_encode_gives() -> None:
    embedder = get_embedder("default")
    assert embedder._query is not None, "the bundled model takes the direct path"
    for query in QUERIES:
        vector = embedder.embed_query(query)
        assert vector.dtype == np.float32 and vector.shape == (embedder.dim,)
        assert np.array_equal(vector, embedder.embed([query])[0])


def test_a_model_with_a_default_prompt_keeps_encode() -> None:
    model = _load(resolve_model("default"), "cpu")
    model.prompts = {"query": "query: "}
    model.default_prompt_name = "query"
    assert _direct_queries(model) is None  # it would leave the prompt out


def _overlapping(embedder: Embedder, texts: list[str]) -> list[object]:
    """Each text's embed_query from its own thread, all waiting while the model is busy."""
    results: list[object] = [None] * len(texts)

    def ask(i: int) -> None:
        try:
            results[i] = embedder.embed_query(texts[i])
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    with embedder._lock:  # the model is busy (a document batch, say)
        for t in threads:
            t.start()
        wait_for(lambda: len(embedder._waiting) >= len(texts), "the queries queue up")
    for t in threads:
        t.join(60)
    return results


def test_queries_that_wait_together_share_one_forward_pass() -> None:
    embedder = Embedder("default")
    texts = [*QUERIES[:3], "backup retention", "年假", "Harbor"]
    passes = embedder.query_passes
    got = _overlapping(embedder, texts)
    assert embedder.query_passes == passes + 1
    for text, vector in zip(texts, got, strict=True):
        assert isinstance(vector, np.ndarray) and vector.dtype == np.float32
        np.testing.assert_allclose(vector, embedder.embed_query(text), atol=2e-6)


def test_a_failed_shared_pass_fails_every_query_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = Embedder("default")

    def broken(texts: list[str]) -> np.ndarray:
        raise RuntimeError("CUDA error: device-side assert triggered")

    forward: Callable[[list[str]], np.ndarray] | None = embedder._query
    monkeypatch.setattr(embedder, "_query", broken)
    got = _overlapping(embedder, ["a", "b", "c"])
    assert all(isinstance(r, RuntimeError) for r in got)
    monkeypatch.setattr(embedder, "_query", forward)
    assert embedder.embed_query("a").shape == (embedder.dim,)  # nothing was left behind
    assert embedder._waiting == []
