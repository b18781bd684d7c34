"""Records stored in and returned by a knowledge base."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
"""[n, dim] float32, L2-normalised rows."""


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as written into a KB, with the text the embedding was computed from."""

    text: str
    page: int | None
    heading: str | None
    position: int
    embed_text: str
    """What was embedded and keyword-indexed (title-enhanced: file name + heading + text)."""
    chunk_id: str | None = None
    """Fixed id (LangChain ids, `kb migrate`); None = the KB assigns an opaque one."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable extras returned with the chunk (LangChain Document metadata)."""


@dataclass(frozen=True)
class Around:
    """A chunk with the chunks just before and after it in its document's reading order."""

    before: ChunkRecord | None
    chunk: ChunkRecord
    after: ChunkRecord | None


@dataclass(frozen=True)
class DocumentUpsert:
    """One document to add or replace, all of its chunks and their vectors."""

    path: str
    """Resolved absolute path: the document's identity."""
    root: str
    """Resolved absolute folder the document was ingested from."""
    source: str
    """Path relative to `root`, with `/`."""
    content_hash: str
    size: int
    mtime: float
    chunks: list[ChunkRecord]
    vectors: Vectors
    doc_id: str | None = None
    """Fixed id (`kb migrate` keeps ids); None = the KB assigns an opaque one."""


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: str
    path: str
    root: str
    source: str
    content_hash: str
    size: int
    mtime: float
    chunks: int


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    doc_id: str
    text: str
    source: str
    page: int | None
    heading: str | None
    score: float
    """Relevance in 0..1, higher is better."""
    kb: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    """Diagnostics: dense cosine, keyword rank, fused score."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The chunk's stored metadata (see ChunkRecord.metadata)."""


@dataclass(frozen=True)
class KBInfo:
    name: str
    backend: str
    embedding: str
    dim: int
    created_at: str
    documents: int
    chunks: int
    min_relevance: float | None = None
    """The KB's own refusal threshold, set by calibration; None = the global setting."""
