"""The FAISS side of a KB: a derived cache of the vectors stored in SQLite.

Inner product over L2-normalised vectors = cosine. The index maps chunk rowids (chunks.id)
to vectors through IndexIDMap2, around IndexFlatIP (exact) or IndexHNSWFlat (approximate).
Files are `index.<generation>.faiss`, written by faiss' own serialiser (no pickle) to a temp
file, fsynced, then renamed into place, so a reader sees a whole file or none.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from kbqa.storage.types import Vectors

IndexKind = Literal["flat", "hnsw"]
Ids = npt.NDArray[np.int64]

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# bench/hnsw_recall.py, 100k real-like vectors: recall@10 against exact search 0.90 at 96,
# 0.97 at 256, 0.98 at 512; 256 costs about 2 ms more per 30-candidate query on 2 cores.
HNSW_EF_SEARCH = 256
# Filtered searches on HNSW score the allowed vectors exactly when there are this few:
# graph search with a selective filter can return fewer than k hits.
EXACT_FILTER_LIMIT = 50_000
_INDEX_FILE = re.compile(r"^index\.(\d+)\.faiss$")


class IndexFileError(Exception):
    """An index file could not be read as a FAISS index."""


def resolve_kind(mode: str, chunks: int, threshold: int) -> IndexKind:
    if mode == "hnsw":
        return "hnsw"
    if mode == "flat":
        return "flat"
    if mode == "auto":
        return "hnsw" if chunks >= threshold else "flat"
    raise ValueError(f"unknown index mode {mode!r}: use auto, flat or hnsw")


class VectorIndex:
    def __init__(self, index: faiss.IndexIDMap2) -> None:
        self._index = index
        inner = faiss.downcast_index(index.index)
        self.kind: IndexKind = "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"

    @classmethod
    def build(cls, kind: IndexKind, dim: int, ids: Ids, vectors: Vectors) -> VectorIndex:
        inner: faiss.Index
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            inner = faiss.IndexFlatIP(dim)
        index = cls(faiss.IndexIDMap2(inner))
        index.add(ids, vectors)
        return index

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> Ids:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    @property
    def can_remove(self) -> bool:
        return self.kind == "flat"  # HNSW graphs do not support deletion

    def remove(self, ids: Ids) -> None:
        if len(ids):
            self._index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64)))

    def reconstruct(self, ids: Ids) -> Vectors:
        return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)

    def search(
        self,
        query: Vectors,
        n: int,
        allowed: Ids | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[tuple[int, float]]:
        """Top `n` (id, inner product) for one query [dim], optionally only among `allowed` ids.

        `sources`, which `allowed` was resolved from, is for indexes that store them (Milvus).
        """
        del sources
        if n <= 0 or self.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return []
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)  # [1, dim]
        if allowed is not None and self.kind == "hnsw" and len(allowed) <= EXACT_FILTER_LIMIT:
            scores = self.reconstruct(allowed) @ query[0]  # [len(allowed)]
            top = np.argsort(-scores, kind="stable")[:n]
            return [(int(allowed[i]), float(scores[i])) for i in top]
        # faiss' bundled type stubs lack the search-parameter classes: build them untyped.
        untyped: Any = faiss
        params: Any = untyped.SearchParametersHNSW() if self.kind == "hnsw" else None
        if params is not None:
            params.efSearch = max(HNSW_EF_SEARCH, 2 * n)
        if allowed is not None:
            params = params or faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(allowed)
        distances, labels = self._index.search(query, min(n, self.ntotal), params=params)
        return [(int(i), float(d)) for i, d in zip(labels[0], distances[0], strict=True) if i >= 0]

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(str(exc).splitlines()[0]) from exc
        if not isinstance(index, faiss.IndexIDMap2):
            raise IndexFileError(f"unexpected index type {type(index).__name__}")
        return cls(index)


def index_path(kb_dir: Path, generation: int) -> Path:
    return kb_dir / f"index.{generation}.faiss"


def index_generations(kb_dir: Path) -> list[int]:
    found = (_INDEX_FILE.match(p.name) for p in kb_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def read_index(path: Path) -> VectorIndex:
    """Load an index file; FileNotFoundError if absent, IndexFileError if unreadable."""
    return VectorIndex.from_bytes(path.read_bytes())


def write_index(kb_dir: Path, generation: int, index: VectorIndex) -> Path:
    target = index_path(kb_dir, generation)
    temp = kb_dir / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temp, "wb") as f:
            f.write(index.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(kb_dir)
    return target


def prune_index_files(kb_dir: Path, keep_from: int) -> None:
    """Delete index files older than generation `keep_from`, and leftover temp files.

    Callers hold the KB write lock, so no temp file still being written can be removed.
    """
    for generation in index_generations(kb_dir):
        if generation < keep_from:
            index_path(kb_dir, generation).unlink(missing_ok=True)
    for temp in kb_dir.glob(".index.*.tmp"):
        temp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
