"""The seam between a KB's logic (kbqa.storage.kb) and the database that holds it.

A `Store` is one KB's rows: meta, documents, chunks with their vectors and checksums, the
generation counter and the keyword index. Two implement it: `SqliteStore` (one file per KB,
the default) and `PostgresStore` (one schema per KB in a shared PostgreSQL database). The KB
logic — what a sync removes and adds, the generation bump, the derived FAISS cache, hybrid
search, `check` — is written once against this interface.

Every read happens inside `snapshot()` (a consistent view, as of one moment) and every change
inside `write()` (one atomic transaction; the caller holds the KB's write lock). Methods other
than those two must be called inside one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np

from kbqa.storage import db
from kbqa.storage.errors import KBDamaged
from kbqa.storage.rows import ChunkRow, PreparedDocument, StoredChunk
from kbqa.storage.types import DocumentInfo, Vectors

DocumentRow = tuple[str, str, str, str, str, int, float]
"""(doc_id, path, root, source, content_hash, size, mtime)"""
ChunkFields = tuple[str, int, str, int | None, str | None, str, str]
"""(chunk_id, position, text, page, heading, embed_text, metadata JSON), in reading order."""


class Store(Protocol):
    kind: str
    """"sqlite" or "postgresql": how `kb check` and error messages name the database."""
    database_errors: tuple[type[Exception], ...]
    """The driver's errors that mean the rows cannot be read (reported by `check`)."""

    def snapshot(self) -> AbstractContextManager[None]: ...

    def write(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...

    # -- meta --------------------------------------------------------------------------------

    def read_meta(self) -> dict[str, str]: ...

    def set_meta(self, key: str, value: str | None) -> None: ...

    def generation(self) -> int:
        """The committed generation; inside `write()` it also locks the counter."""
        ...

    def set_generation(self, generation: int) -> None: ...

    # -- documents and chunks ----------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(documents, chunks)"""
        ...

    def documents(self) -> list[DocumentInfo]:
        """Every document with its chunk count, by source then path."""
        ...

    def document(self, doc_id: str) -> tuple[DocumentRow | None, list[ChunkFields]]: ...

    def document_order(self) -> list[str]:
        """Document ids in storage order (by their first chunk's rowid)."""
        ...

    def chunks_with_vectors(self, doc_id: str) -> list[tuple[ChunkFields, bytes]]: ...

    def find_documents(self, doc_ids_or_paths: Sequence[str]) -> list[str]: ...

    def delete_documents(self, doc_ids: Sequence[str]) -> list[int]:
        """Delete documents with their chunks; returns the deleted chunks' rowids."""
        ...

    def delete_chunks(self, chunk_ids: Sequence[str]) -> list[int]:
        """Delete chunks by chunk id, and any document left without chunks; returns rowids."""
        ...

    def next_rowid(self) -> int:
        """The first rowid never used by this KB (rowids are never reused)."""
        ...

    def insert_document(self, doc: PreparedDocument, first_rowid: int) -> list[int]: ...

    def load_chunks(
        self, column: str, keys: Iterable[int | str], dim: int, kb_name: str
    ) -> dict[int | str, StoredChunk]: ...

    def chunk_count(self) -> int: ...

    def read_all_vectors(self, dim: int, kb_name: str) -> tuple[np.ndarray, Vectors]:
        """([n] int64 rowids, [n, dim] vectors) of every chunk, for rebuilding the index."""
        ...

    # -- search --------------------------------------------------------------------------------

    def source_rowids(self, sources: Sequence[str]) -> np.ndarray:
        """[n] int64 rowids of the chunks of documents named by source or absolute path."""
        ...

    def keyword_search(
        self, query_text: str, n: int, sources: Sequence[str] | None
    ) -> list[tuple[int, float]]:
        """Top `n` (rowid, bm25) with bm25 > 0, best first."""
        ...

    # -- check -----------------------------------------------------------------------------------

    def integrity_problems(self) -> list[str]:
        """The database's own consistency check (outside a snapshot)."""
        ...

    def missing_tables(self) -> list[str]: ...

    def chunk_rows(self) -> Iterator[ChunkRow]:
        """Every chunk row as stored, checksum last, by rowid."""
        ...

    def orphan_chunks(self) -> int: ...

    def keyword_problems(self) -> list[str]: ...

    def rowids(self) -> np.ndarray: ...

    def vectors_by_rowid(self, ids: np.ndarray) -> list[bytes]: ...


def read_valid_meta(store: Store, name: str) -> dict[str, str]:
    """The KB's meta, or KBDamaged naming what is missing or wrong."""
    try:
        with store.snapshot():
            missing = store.missing_tables()
            meta = {} if missing else store.read_meta()
    except store.database_errors as exc:
        raise KBDamaged(f"knowledge base {name} is damaged: {exc}") from exc
    problems = [f"table {t} is missing" for t in missing] or db.meta_problems(meta)
    if problems:
        raise KBDamaged(f"knowledge base {name} is damaged: {'; '.join(problems)}")
    return meta
