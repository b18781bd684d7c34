"""Builders for storage tests: documents with random unit vectors, no embedding model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kbqa.settings import StorageSettings
from kbqa.storage.types import ChunkRecord, DocumentUpsert, Vectors

DIM = 16


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> Vectors:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_doc(
    path: str,
    texts: list[str],
    vectors: Vectors,
    *,
    root: str = "/docs",
    content_hash: str = "h0",
) -> DocumentUpsert:
    chunks = [
        ChunkRecord(text=t, page=None, heading=None, position=i, embed_text=t)
        for i, t in enumerate(texts)
    ]
    return DocumentUpsert(
        path=path,
        root=root,
        source=path.removeprefix(root + "/"),
        content_hash=content_hash,
        size=sum(len(t) for t in texts),
        mtime=0.0,
        chunks=chunks,
        vectors=vectors,
    )


def random_doc(
    rng: np.random.Generator, path: str, n: int, *, dim: int = DIM, tag: str = ""
) -> DocumentUpsert:
    texts = [f"{tag} chunk {i} of {path} word{rng.integers(1000)}" for i in range(n)]
    return make_doc(path, texts, unit_vectors(rng, n, dim), content_hash=tag or "h0")


@dataclass(frozen=True)
class KBsAt:
    """The storage settings of a home whose KBs are in `kbs_dir` (kbqa.storage.config reads them):
    the defaults, as `kbqa kb check` has them without a config file."""

    kbs_dir: Path
    storage: StorageSettings = field(default_factory=StorageSettings)
