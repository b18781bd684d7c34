"""`Store` over one SQLite file per KB (`<kb>/kb.sqlite`, WAL mode): the default database.

The SQL lives in kbqa.storage.db (schema, meta), kbqa.storage.rows (documents and chunks) and
kbqa.storage.search (FTS5 keyword search); this class binds them to the KB's one connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from kbqa.storage import db, rows
from kbqa.storage.errors import KBDamaged
from kbqa.storage.rows import IN_JSON, ChunkRow, PreparedDocument, StoredChunk
from kbqa.storage.search import SOURCE_FILTER, keyword_search
from kbqa.storage.store import ChunkFields, DocumentRow
from kbqa.storage.types import DocumentInfo, Vectors

_CHUNK_FIELDS = "chunk_id, position, text, page, heading, embed_text, metadata"


class SqliteStore:
    kind = "sqlite"
    database_errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)

    def __init__(self, conn: sqlite3.Connection, kb_name: str) -> None:
        # Autocommit connection; shared by threads under the KnowledgeBase's mutex.
        self.conn = conn
        self._name = kb_name

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with _damage_as_kbdamaged(self._name), db.transaction(self.conn):
            yield

    @contextmanager
    def write(self) -> Iterator[None]:
        with _damage_as_kbdamaged(self._name), db.transaction(self.conn, "IMMEDIATE"):
            yield

    def close(self) -> None:
        self.conn.close()

    def read_meta(self) -> dict[str, str]:
        return db.read_meta(self.conn)

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def generation(self) -> int:
        return db.read_generation(self.conn)

    def set_generation(self, generation: int) -> None:
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))

    def counts(self) -> tuple[int, int]:
        documents = self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        return documents, self.chunk_count()

    def documents(self) -> list[DocumentInfo]:
        found = self.conn.execute(
            "SELECT d.doc_id, d.path, d.root, d.source, d.content_hash, d.size, d.mtime, "
            "count(c.id) FROM documents d LEFT JOIN chunks c ON c.doc_id = d.doc_id "
            "GROUP BY d.doc_id ORDER BY d.source, d.path"
        ).fetchall()
        return [DocumentInfo(*row) for row in found]

    def document(self, doc_id: str) -> tuple[DocumentRow | None, list[ChunkFields]]:
        info = self.conn.execute(
            "SELECT doc_id, path, root, source, content_hash, size, mtime FROM documents "
            "WHERE doc_id = ?",
            (doc_id,),
        ).fetchone()
        found = self.conn.execute(
            f"SELECT {_CHUNK_FIELDS} FROM chunks WHERE doc_id = ? ORDER BY position, id",
            (doc_id,),
        ).fetchall()
        return info, found

    def document_order(self) -> list[str]:
        found = self.conn.execute("SELECT doc_id FROM chunks GROUP BY doc_id ORDER BY min(id)")
        return [doc_id for (doc_id,) in found]

    def chunks_with_vectors(self, doc_id: str) -> list[tuple[ChunkFields, bytes]]:
        found = self.conn.execute(
            f"SELECT {_CHUNK_FIELDS}, vector FROM chunks WHERE doc_id = ? ORDER BY position, id",
            (doc_id,),
        )
        return [(row[:-1], row[-1]) for row in found]

    def find_documents(self, doc_ids_or_paths: Sequence[str]) -> list[str]:
        return rows.find_documents(self.conn, doc_ids_or_paths)

    def delete_documents(self, doc_ids: Sequence[str]) -> list[int]:
        return rows.delete_documents(self.conn, doc_ids)

    def delete_chunks(self, chunk_ids: Sequence[str]) -> list[int]:
        return rows.delete_chunks(self.conn, chunk_ids)

    def next_rowid(self) -> int:
        return rows.next_rowid(self.conn)

    def insert_document(self, doc: PreparedDocument, first_rowid: int) -> list[int]:
        return rows.insert_document(self.conn, doc, first_rowid)

    def load_chunks(
        self, column: str, keys: Iterable[int | str], dim: int, kb_name: str
    ) -> dict[int | str, StoredChunk]:
        return rows.load_chunks(self.conn, column, keys, dim, kb_name)

    def chunk_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def read_all_vectors(self, dim: int, kb_name: str) -> tuple[np.ndarray, Vectors]:
        return rows.read_all_vectors(self.conn, dim, kb_name)

    def source_rowids(self, sources: Sequence[str]) -> np.ndarray:
        wanted = json.dumps(list(sources))
        found = self.conn.execute(SOURCE_FILTER, (wanted, wanted))
        return np.fromiter((rowid for (rowid,) in found), dtype=np.int64)

    def keyword_search(
        self, query_text: str, n: int, sources: Sequence[str] | None
    ) -> list[tuple[int, float]]:
        return keyword_search(self.conn, query_text, n, sources)

    def integrity_problems(self) -> list[str]:
        try:
            integrity = [line for (line,) in self.conn.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as exc:
            return [f"the database is unreadable: {exc}"]
        return [] if integrity == ["ok"] else [f"SQLite integrity: {line}" for line in integrity]

    def missing_tables(self) -> list[str]:
        return db.missing_tables(self.conn)

    def chunk_rows(self) -> Iterator[ChunkRow]:
        yield from self.conn.execute(
            "SELECT chunk_id, doc_id, position, text, page, heading, embed_text, metadata, vector, "
            "checksum FROM chunks ORDER BY id"
        )

    def orphan_chunks(self) -> int:
        return int(
            self.conn.execute(
                "SELECT count(*) FROM chunks c "
                "WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = c.doc_id)"
            ).fetchone()[0]
        )

    def keyword_problems(self) -> list[str]:
        unindexed = self.conn.execute(
            "SELECT count(*) FROM chunks WHERE id NOT IN (SELECT rowid FROM chunks_fts)"
        ).fetchone()[0]
        stale = self.conn.execute(
            "SELECT count(*) FROM chunks_fts WHERE rowid NOT IN (SELECT id FROM chunks)"
        ).fetchone()[0]
        if unindexed or stale:
            return [
                f"keyword index out of step: {unindexed} chunks missing, {stale} unknown entries"
            ]
        return []

    def rowids(self) -> np.ndarray:
        found = self.conn.execute("SELECT id FROM chunks")
        return np.fromiter((r for (r,) in found), dtype=np.int64)

    def vectors_by_rowid(self, ids: np.ndarray) -> list[bytes]:
        wanted = json.dumps([int(i) for i in ids])
        sql = f"SELECT id, vector FROM chunks WHERE id {IN_JSON}"
        found = dict(self.conn.execute(sql, (wanted,)))
        return [found[int(i)] for i in ids]


@contextmanager
def _damage_as_kbdamaged(name: str) -> Iterator[None]:
    """Report SQLite corruption as KBDamaged (one line for the user), other errors as they are."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorname", "")
        if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            raise KBDamaged(
                f"knowledge base {name} is damaged: {exc}; run `kbqa kb check`"
            ) from exc
        raise
