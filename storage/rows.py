"""Reading and writing document and chunk rows (always inside a caller's transaction)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kbqa.storage.db import chunk_checksum, dump_metadata
from kbqa.storage.errors import EmbeddingMismatch, KBDamaged, StorageError
from kbqa.storage.keyword import tokenize
from kbqa.storage.types import DocumentUpsert, SearchHit, Vectors

# A JSON array bound to one parameter: no limit on the number of values, unlike `IN (?, ?, …)`.
IN_JSON = "IN (SELECT value FROM json_each(?))"

UNIT_TOLERANCE = 1e-5
"""A vector whose norm is this close to 1 counts as normalised (float32 rounding)."""

ChunkRow = tuple[str, str, int, str, int | None, str | None, str, str, bytes, str]


@dataclass(frozen=True)
class PreparedDocument:
    """An upsert turned into rows, ready for a short write transaction."""

    doc_id: str
    path: str
    fixed_doc_id: bool
    document_row: tuple[str, str, str, str, str, int, float]
    chunk_rows: list[ChunkRow]
    fixed_chunk_ids: list[str]
    fts_texts: list[str]
    vectors: Vectors


def normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [n, 1]
    # A zero vector (nothing to embed) stays zero: cosine 0 with everything. Rows that are
    # unit length already stay bit for bit, so copying stored vectors (`kb migrate`) is exact.
    keep = (norms == 0) | (np.abs(norms - 1.0) < UNIT_TOLERANCE)
    return (vectors / np.where(keep, 1.0, norms)).astype(np.float32)


def prepare_document(upsert: DocumentUpsert, dim: int, kb_name: str) -> PreparedDocument:
    """Validate one upsert and compute everything that needs no database (tokens, checksums)."""
    vectors = np.asarray(upsert.vectors, dtype=np.float32)
    if vectors.ndim != 2 or (len(upsert.chunks) and vectors.shape[1] != dim):
        got = vectors.shape[1] if vectors.ndim == 2 else f"shape {vectors.shape}"
        raise EmbeddingMismatch(
            f"knowledge base {kb_name} stores {dim}-dimensional vectors; "
            f"{upsert.path} comes with {got}"
        )
    if vectors.shape[0] != len(upsert.chunks):
        raise StorageError(
            f"{upsert.path}: {len(upsert.chunks)} chunks but {vectors.shape[0]} vectors"
        )
    if not np.isfinite(vectors).all():
        raise StorageError(f"{upsert.path}: vectors contain NaN or infinity")
    vectors = normalise(vectors.reshape(len(upsert.chunks), dim))
    doc_id = upsert.doc_id or uuid.uuid4().hex
    chunk_rows: list[ChunkRow] = []
    for chunk, vector in zip(upsert.chunks, vectors, strict=True):
        chunk_id = chunk.chunk_id or uuid.uuid4().hex
        metadata = dump_metadata(chunk.metadata)
        blob = vector.tobytes()
        fields = (chunk_id, doc_id, chunk.position, chunk.text, chunk.page, chunk.heading)
        checksum = chunk_checksum(*fields, chunk.embed_text, metadata, blob)
        chunk_rows.append((*fields, chunk.embed_text, metadata, blob, checksum))
    return PreparedDocument(
        doc_id=doc_id,
        path=upsert.path,
        fixed_doc_id=upsert.doc_id is not None,
        document_row=(
            doc_id,
            upsert.path,
            upsert.root,
            upsert.source,
            upsert.content_hash,
            upsert.size,
            upsert.mtime,
        ),
        chunk_rows=chunk_rows,
        fixed_chunk_ids=[c.chunk_id for c in upsert.chunks if c.chunk_id is not None],
        fts_texts=[" ".join(tokenize(c.embed_text)) for c in upsert.chunks],
        vectors=vectors,
    )


def find_documents(conn: sqlite3.Connection, doc_ids_or_paths: Sequence[str]) -> list[str]:
    if not doc_ids_or_paths:
        return []
    wanted = json.dumps(list(doc_ids_or_paths))
    rows = conn.execute(
        f"SELECT doc_id FROM documents WHERE doc_id {IN_JSON} OR path {IN_JSON}", (wanted, wanted)
    )
    return [doc_id for (doc_id,) in rows]


def delete_documents(conn: sqlite3.Connection, doc_ids: Sequence[str]) -> list[int]:
    """Delete documents with their chunks; returns the deleted chunks' rowids."""
    if not doc_ids:
        return []
    wanted = json.dumps(list(doc_ids))
    rowids = [
        r for (r,) in conn.execute(f"SELECT id FROM chunks WHERE doc_id {IN_JSON}", (wanted,))
    ]
    _delete_rowids(conn, rowids)
    conn.execute(f"DELETE FROM documents WHERE doc_id {IN_JSON}", (wanted,))
    return rowids


def delete_chunks(conn: sqlite3.Connection, chunk_ids: Sequence[str]) -> list[int]:
    """Delete chunks by chunk id, and any document left without chunks; returns rowids."""
    if not chunk_ids:
        return []
    wanted = json.dumps(list(chunk_ids))
    rows = conn.execute(f"SELECT id, doc_id FROM chunks WHERE chunk_id {IN_JSON}", (wanted,))
    found = rows.fetchall()
    _delete_rowids(conn, [rowid for rowid, _ in found])
    touched = json.dumps(sorted({doc_id for _, doc_id in found}))
    conn.execute(
        f"DELETE FROM documents WHERE doc_id {IN_JSON} "
        "AND NOT EXISTS (SELECT 1 FROM chunks WHERE chunks.doc_id = documents.doc_id)",
        (touched,),
    )
    return [rowid for rowid, _ in found]


def _delete_rowids(conn: sqlite3.Connection, rowids: list[int]) -> None:
    wanted = json.dumps(rowids)
    conn.execute(f"DELETE FROM chunks WHERE id {IN_JSON}", (wanted,))
    conn.execute(f"DELETE FROM chunks_fts WHERE rowid {IN_JSON}", (wanted,))


def next_rowid(conn: sqlite3.Connection) -> int:
    # sqlite_sequence remembers the largest id ever used, even after it was deleted.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
    top = conn.execute("SELECT max(id) FROM chunks").fetchone()[0]
    return max(row[0] if row else 0, top or 0) + 1


def insert_document(conn: sqlite3.Connection, doc: PreparedDocument, first_rowid: int) -> list[int]:
    """Insert a prepared document; its chunks get rowids first_rowid, first_rowid + 1, …"""
    conn.execute(
        "INSERT INTO documents (doc_id, path, root, source, content_hash, size, mtime) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        doc.document_row,
    )
    rowids = list(range(first_rowid, first_rowid + len(doc.chunk_rows)))
    try:
        conn.executemany(
            "INSERT INTO chunks (id, chunk_id, doc_id, position, text, page, heading, embed_text, "
            "metadata, vector, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(rowid, *row) for rowid, row in zip(rowids, doc.chunk_rows, strict=True)],
        )
    except sqlite3.IntegrityError as exc:
        raise StorageError(f"{doc.path}: duplicate chunk id ({exc})") from exc
    conn.executemany(
        "INSERT INTO chunks_fts (rowid, tokens) VALUES (?, ?)",
        list(zip(rowids, doc.fts_texts, strict=True)),
    )
    return rowids


_HIT_SELECT = (
    "SELECT c.id, c.chunk_id, c.doc_id, c.text, d.source, c.page, c.heading, c.metadata, c.vector "
    "FROM chunks c JOIN documents d ON d.doc_id = c.doc_id "
)


@dataclass(frozen=True)
class StoredChunk:
    rowid: int
    hit: SearchHit
    vector: Vectors
    """[dim] unit vector as stored."""


def load_chunks(
    conn: sqlite3.Connection, column: str, keys: Iterable[int | str], dim: int, kb_name: str
) -> dict[int | str, StoredChunk]:
    """Chunks whose `column` ("id" or "chunk_id") is in `keys`, keyed by that column."""
    assert column in ("id", "chunk_id")
    wanted = json.dumps(list(keys))
    found: dict[int | str, StoredChunk] = {}
    for row in conn.execute(f"{_HIT_SELECT} WHERE c.{column} {IN_JSON}", (wanted,)):
        chunk = stored_chunk(row[:-1], row[-1], dim, kb_name)
        found[chunk.rowid if column == "id" else chunk.hit.chunk_id] = chunk
    return found


HitFields = tuple[int, str, str, str, str, int | None, str | None, str]
"""(rowid, chunk_id, doc_id, text, source, page, heading, metadata JSON)"""


def stored_chunk(fields: HitFields, blob: bytes, dim: int, kb_name: str) -> StoredChunk:
    """A chunk as search returns it, from its row (whichever database it came from)."""
    rowid, chunk_id, doc_id, text, source, page, heading, metadata = fields
    if len(blob) != 4 * dim:
        raise KBDamaged(
            f"knowledge base {kb_name}: chunk {chunk_id} has a vector of the wrong size; "
            "run `kbqa kb check`"
        )
    hit = SearchHit(
        chunk_id=chunk_id,
        doc_id=doc_id,
        text=text,
        source=source,
        page=page,
        heading=heading,
        score=0.0,
        kb=kb_name,
        metadata=json.loads(metadata),
    )
    return StoredChunk(rowid, hit, np.frombuffer(blob, dtype=np.float32))


def read_all_vectors(
    conn: sqlite3.Connection, dim: int, kb_name: str
) -> tuple[np.ndarray, Vectors]:
    """([n] int64 rowids, [n, dim] vectors) of every chunk, for rebuilding the FAISS index."""
    rows = conn.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
    ids = np.fromiter((rowid for rowid, _ in rows), dtype=np.int64, count=len(rows))
    blob = b"".join(vector for _, vector in rows)
    if len(blob) != 4 * dim * len(rows):
        raise KBDamaged(
            f"knowledge base {kb_name}: stored vectors do not match dimension {dim}; "
            "run `kbqa kb check`"
        )
    return ids, np.frombuffer(blob, dtype=np.float32).reshape(len(rows), dim)
