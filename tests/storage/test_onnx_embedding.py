"""The ONNX Runtime backend of the embedding: its vectors are PyTorch's within int8 rounding on
real texts, its export is cached and checked, and wherever it cannot serve PyTorch does, with a
log line."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from kbqa.storage import embeddings, onnx_embedding
from kbqa.storage.embeddings import Embedder, get_embedder, resolve_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def real_texts() -> list[str]:
    """Chunk-sized pieces of installed packages' descriptions (jieba's is Chinese)."""
    texts = []
    for package, size in [("jieba", 250), ("faiss-cpu", 600), ("httpx", 600), ("typer", 600)]:
        description = importlib.metadata.metadata(package).get_payload() or ""  # type: ignore[attr-defined]
        pieces = [description[i : i + size] for i in range(0, len(description), size)]
        texts += [p for p in pieces if p.strip()][:8]
    assert len(texts) >= 20, "the installed packages' descriptions went missing"
    return texts


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def onnx_embedder(cache: Path) -> Embedder:
    embedder = Embedder("default", backend="onnx", cache_dir=cache)
    assert embedder.backend == "onnx"
    return embedder


def test_onnx_vectors_are_the_torch_ones_within_int8_rounding(onnx_embedder: Embedder) -> None:
    texts = real_texts()
    fast = onnx_embedder.embed(texts)
    exact = get_embedder("default").embed(texts)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(fast * exact, axis=1)
    assert cosines.min() >= onnx_embedding.MIN_COSINE and cosines.mean() >= 0.985, cosines
    # What retrieval needs: every text's nearest PyTorch vector is its own.
    assert list(np.argmax(fast @ exact.T, axis=1)) == list(range(len(texts)))


def test_a_query_gets_the_vector_ingest_would_give(onnx_embedder: Embedder) -> None:
    for query in ["How long are backups kept?", "公司的年假有多少天？", ""]:
        assert np.array_equal(onnx_embedder.embed_query(query), onnx_embedder.embed([query])[0])


def test_the_export_is_reused_and_a_damaged_one_is_not(
    onnx_embedder: Embedder, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported: list[str] = []
    monkeypatch.setattr(onnx_embedding, "export", lambda source, work: exported.append(source))
    path = onnx_embedding.cached_model(onnx_embedder._model, resolve_model("default"), cache)
    assert exported == [], "the fixture's export is found again"
    assert path.parent == cache / "models" / "embeddings" and path.suffix == ".onnx"
    copy, stamp = tmp_path / path.name, tmp_path / path.with_suffix(".json").name
    copy.write_bytes(path.read_bytes())
    stamp.write_bytes(path.with_suffix(".json").read_bytes())
    assert onnx_embedding._file_matches(copy, stamp)
    with copy.open("r+b") as f:  # a disk error or a killed copy changed some bytes
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    assert not onnx_embedding._file_matches(copy, stamp)


def test_a_failed_export_falls_back_to_torch_with_a_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a machine without the package
    with caplog.at_level(logging.WARNING, logger="kbqa.embedding"):
        embedder = Embedder("default", backend="onnx", cache_dir=tmp_path / "cache")
    assert embedder.backend == "torch"
    assert "onnx package is not installed" in caplog.text and "using PyTorch" in caplog.text
    texts = real_texts()[:3]
    assert np.array_equal(embedder.embed(texts), get_embedder("default").embed(texts))
    assert not list((tmp_path / "cache").rglob("*.onnx"))


def test_an_unwritable_cache_falls_back_to_torch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="kbqa.embedding"):
        embedder = Embedder("default", backend="auto", cache_dir=blocked)
    assert embedder.backend == "torch" and "using PyTorch" in caplog.text


def test_torch_means_torch(tmp_path: Path) -> None:
    assert Embedder("default", backend="torch", cache_dir=tmp_path).backend == "torch"
    assert not list(tmp_path.rglob("*.onnx"))


def test_an_export_under_way_does_not_hold_up_another_embedder() -> None:
    ready = get_embedder("default")  # PyTorch's, for queries
    onnx_key = ("default", "cpu", 32, "onnx")
    with embeddings._embedders_lock:
        exporting = embeddings._loading.setdefault(onnx_key, threading.Lock())
    got: list[Embedder] = []
    with exporting:  # as while a first ONNX export runs in another thread
        asker = threading.Thread(target=lambda: got.append(get_embedder("default")))
        asker.start()
        asker.join(60)
    assert got == [ready]
