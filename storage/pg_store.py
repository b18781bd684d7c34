"""`Store` over one KB's schema in a shared PostgreSQL database (kbqa.storage.pg_schema).

Each `snapshot()` or `write()` borrows a pooled connection for its transaction: a snapshot is
REPEATABLE READ (one consistent view, like a SQLite read transaction), a write is one
transaction that locks the generation counter, so even a writer that lost its advisory
lock cannot interleave with another. Keyword scores are FTS5's BM25, computed from the
postings in SQL (k1 = 1.2, b = 0.75, idf floored at 1e-6), so hits rank as on SQLite.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import numpy as np

from kbqa.storage import pg_pool
from kbqa.storage.errors import KBDamaged, StorageError
from kbqa.storage.keyword import fts_match_expression, tokenize
from kbqa.storage.pg_schema import REQUIRED_TABLES, schema_name
from kbqa.storage.rows import ChunkRow, PreparedDocument, StoredChunk, stored_chunk
from kbqa.storage.store import ChunkFields, DocumentRow
from kbqa.storage.types import DocumentInfo, Vectors

if TYPE_CHECKING:
    import psycopg

_CHUNK_FIELDS = "chunk_id, position, text, page, heading, embed_text, metadata"
_SOURCE_FILTER = (
    "SELECT c.id FROM chunks c JOIN documents d ON d.doc_id = c.doc_id "
    "WHERE d.source = ANY(%(sources)s) OR d.path = ANY(%(sources)s)"
)
# FTS5's bm25(): sum over the query's terms of idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl
# / avgdl)), idf = ln((N - df + 0.5) / (df + 0.5)) floored at 1e-6.
_BM25 = """
WITH s AS MATERIALIZED (
    SELECT chunks::float8 AS n, tokens::float8 / greatest(chunks, 1) AS avgdl FROM totals LIMIT 1
), q AS MATERIALIZED (
    SELECT t.term, greatest(ln((s.n - t.df + 0.5) / (t.df + 0.5)), 1e-6) AS idf
    FROM terms t CROSS JOIN s WHERE t.term = ANY(%(terms)s) AND t.df > 0
)
SELECT p.id,
    sum(q.idf * p.tf * 2.2 / (p.tf + 1.2 * (0.25 + 0.75 * p.dl::float8 / s.avgdl))) AS score
FROM q JOIN postings p ON p.term = q.term CROSS JOIN s
{where}
GROUP BY p.id ORDER BY score DESC, p.id LIMIT %(n)s
"""
_MAX_TERMS = 64  # as kbqa.storage.keyword.fts_match_expression


class PostgresStore:
    kind = "postgresql"

    def __init__(self, url: str, uid: str, kb_name: str) -> None:
        import psycopg

        self.database_errors: tuple[type[Exception], ...] = (psycopg.DatabaseError,)
        self._url = url
        self._schema = schema_name(uid)
        self._name = kb_name
        self._conn: psycopg.Connection[Any] | None = None
        self._writing = False

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        if self._conn is not None:  # already inside this store's transaction
            yield
            return
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"):
            yield

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED"):
            self._writing = True
            try:
                yield
            finally:
                self._writing = False

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[None]:
        import psycopg

        with pg_pool.connection(self._url) as conn, _missing_as_damage(self._name):
            # One round trip. LOCAL: the setting ends with the transaction, so the pooled
            # connection goes back clean.
            conn.execute(f"{begin}; SET LOCAL search_path TO {self._schema}")
            self._conn = conn
            try:
                yield
            except BaseException:
                # A broken connection has lost its transaction already.
                with suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._conn = None
            conn.execute("COMMIT")

    def close(self) -> None:
        """Nothing to close: connections belong to the process's pool."""

    @property
    def _c(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise StorageError("internal: a query outside a transaction")
        return self._conn

    def _rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self._c.execute(sql, params).fetchall()

    # -- meta --------------------------------------------------------------------------------

    def read_meta(self) -> dict[str, str]:
        return {key: value for key, value in self._rows("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._c.execute("DELETE FROM meta WHERE key = %s", (key,))
        else:
            self._c.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def generation(self) -> int:
        lock = " FOR UPDATE" if self._writing else ""
        found = self._rows(f"SELECT value FROM meta WHERE key = 'generation'{lock}")
        if not found:
            raise KBDamaged("knowledge base meta has no generation")
        return int(found[0][0])

    def set_generation(self, generation: int) -> None:
        self._c.execute("UPDATE meta SET value = %s WHERE key = 'generation'", (str(generation),))

    # -- documents and chunks ----------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        documents = self._rows("SELECT count(*) FROM documents")[0][0]
        return int(documents), self.chunk_count()

    def documents(self) -> list[DocumentInfo]:
        found = self._rows(
            "SELECT d.doc_id, d.path, d.root, d.source, d.content_hash, d.size, d.mtime, "
            "count(c.id) FROM documents d LEFT JOIN chunks c ON c.doc_id = d.doc_id "
            'GROUP BY d.doc_id ORDER BY d.source COLLATE "C", d.path COLLATE "C"'
        )
        return [DocumentInfo(*row) for row in found]

    def document(self, doc_id: str) -> tuple[DocumentRow | None, list[ChunkFields]]:
        info = self._rows(
            "SELECT doc_id, path, root, source, content_hash, size, mtime FROM documents "
            "WHERE doc_id = %s",
            (doc_id,),
        )
        found = self._rows(
            f"SELECT {_CHUNK_FIELDS} FROM chunks WHERE doc_id = %s ORDER BY position, id",
            (doc_id,),
        )
        return (info[0] if info else None), found

    def document_order(self) -> list[str]:
        found = self._rows("SELECT doc_id FROM chunks GROUP BY doc_id ORDER BY min(id)")
        return [doc_id for (doc_id,) in found]

    def chunks_with_vectors(self, doc_id: str) -> list[tuple[ChunkFields, bytes]]:
        found = self._rows(
            f"SELECT {_CHUNK_FIELDS}, vector FROM chunks WHERE doc_id = %s ORDER BY position, id",
            (doc_id,),
        )
        return [(row[:-1], bytes(row[-1])) for row in found]

    def find_documents(self, doc_ids_or_paths: Sequence[str]) -> list[str]:
        if not doc_ids_or_paths:
            return []
        wanted = list(doc_ids_or_paths)
        found = self._rows(
            "SELECT doc_id FROM documents WHERE doc_id = ANY(%s) OR path = ANY(%s)",
            (wanted, wanted),
        )
        return [doc_id for (doc_id,) in found]

    def delete_documents(self, doc_ids: Sequence[str]) -> list[int]:
        if not doc_ids:
            return []
        wanted = list(doc_ids)
        rowids = [
            r for (r,) in self._rows("SELECT id FROM chunks WHERE doc_id = ANY(%s)", (wanted,))
        ]
        self._delete_rowids(rowids)
        self._c.execute("DELETE FROM documents WHERE doc_id = ANY(%s)", (wanted,))
        return rowids

    def delete_chunks(self, chunk_ids: Sequence[str]) -> list[int]:
        if not chunk_ids:
            return []
        found = self._rows(
            "SELECT id, doc_id FROM chunks WHERE chunk_id = ANY(%s)", (list(chunk_ids),)
        )
        self._delete_rowids([rowid for rowid, _ in found])
        self._c.execute(
            "DELETE FROM documents d WHERE d.doc_id = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.doc_id = d.doc_id)",
            (sorted({doc_id for _, doc_id in found}),),
        )
        return [rowid for rowid, _ in found]

    def _delete_rowids(self, rowids: list[int]) -> None:
        if not rowids:
            return
        # Postings go first, found by (term, id) from each chunk's tokens: the primary key
        # serves the delete, so postings need no second index (which would slow every insert).
        self._c.execute(
            "WITH doomed AS (SELECT DISTINCT c.id, t.term FROM chunks c "
            "CROSS JOIN LATERAL unnest(string_to_array(c.tokens, ' ')) AS t(term) "
            "WHERE c.id = ANY(%(ids)s) AND t.term <> ''), "
            "gone AS (DELETE FROM postings p USING doomed d "
            "WHERE p.term = d.term AND p.id = d.id RETURNING p.term), "
            "counted AS (SELECT term, count(*) AS n FROM gone GROUP BY term) "
            "UPDATE terms t SET df = t.df - c.n FROM counted c WHERE t.term = c.term",
            {"ids": rowids},
        )
        self._c.execute(
            "WITH gone AS (DELETE FROM chunks WHERE id = ANY(%(ids)s) RETURNING token_count) "
            "UPDATE totals SET chunks = chunks - (SELECT count(*) FROM gone), "
            "tokens = tokens - (SELECT coalesce(sum(token_count), 0) FROM gone)",
            {"ids": rowids},
        )

    def next_rowid(self) -> int:
        return int(self._rows("SELECT next_id FROM totals")[0][0])

    def insert_document(self, doc: PreparedDocument, first_rowid: int) -> list[int]:
        import psycopg

        self._c.execute(
            "INSERT INTO documents (doc_id, path, root, source, content_hash, size, mtime) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            doc.document_row,
        )
        rowids = list(range(first_rowid, first_rowid + len(doc.chunk_rows)))
        tokens = [text.split() for text in doc.fts_texts]
        cur = self._c.cursor()
        try:
            with cur.copy(
                "COPY chunks (id, chunk_id, doc_id, position, text, page, heading, embed_text, "
                "metadata, vector, checksum, tokens, token_count) FROM STDIN"
            ) as copy:
                for rowid, row, text, terms in zip(
                    rowids, doc.chunk_rows, doc.fts_texts, tokens, strict=True
                ):
                    copy.write_row((rowid, *row, text, len(terms)))
        except psycopg.errors.UniqueViolation as exc:
            raise StorageError(f"{doc.path}: duplicate chunk id ({exc})") from exc
        postings = [
            (term, rowid, tf, len(terms))
            for rowid, terms in zip(rowids, tokens, strict=True)
            for term, tf in Counter(terms).items()
        ]
        with cur.copy("COPY postings (term, id, tf, dl) FROM STDIN") as copy:
            for posting in postings:
                copy.write_row(posting)
        df = Counter(term for term, *_ in postings)
        self._c.execute(
            "INSERT INTO terms (term, df) SELECT * FROM unnest(%s::text[], %s::int[]) "
            "ON CONFLICT (term) DO UPDATE SET df = terms.df + excluded.df",
            (list(df), list(df.values())),
        )
        self._c.execute(
            "UPDATE totals SET chunks = chunks + %s, tokens = tokens + %s, "
            "next_id = greatest(next_id, %s)",
            (len(rowids), sum(len(terms) for terms in tokens), first_rowid + len(rowids)),
        )
        return rowids

    def load_chunks(
        self, column: str, keys: Iterable[int | str], dim: int, kb_name: str
    ) -> dict[int | str, StoredChunk]:
        assert column in ("id", "chunk_id")
        wanted = list(keys)
        if not wanted:
            return {}
        found: dict[int | str, StoredChunk] = {}
        for row in self._rows(
            "SELECT c.id, c.chunk_id, c.doc_id, c.text, d.source, c.page, c.heading, c.metadata, "
            "c.vector FROM chunks c JOIN documents d ON d.doc_id = c.doc_id "
            f"WHERE c.{column} = ANY(%s)",
            (wanted,),
        ):
            chunk = stored_chunk(row[:-1], bytes(row[-1]), dim, kb_name)
            found[chunk.rowid if column == "id" else chunk.hit.chunk_id] = chunk
        return found

    def chunk_count(self) -> int:
        return int(self._rows("SELECT count(*) FROM chunks")[0][0])

    def read_all_vectors(self, dim: int, kb_name: str) -> tuple[np.ndarray, Vectors]:
        # Binary results: the vectors arrive as raw bytes, with no hex text to decode.
        with self._c.cursor(binary=True) as cur:
            found = cur.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        ids = np.fromiter((rowid for rowid, _ in found), dtype=np.int64, count=len(found))
        blob = b"".join(bytes(vector) for _, vector in found)
        if len(blob) != 4 * dim * len(found):
            raise KBDamaged(
                f"knowledge base {kb_name}: stored vectors do not match dimension {dim}; "
                "run `kbqa kb check`"
            )
        return ids, np.frombuffer(blob, dtype=np.float32).reshape(len(found), dim)

    # -- search --------------------------------------------------------------------------------

    def source_rowids(self, sources: Sequence[str]) -> np.ndarray:
        found = self._rows(_SOURCE_FILTER, {"sources": list(sources)})
        return np.fromiter((rowid for (rowid,) in found), dtype=np.int64)

    def keyword_search(
        self, query_text: str, n: int, sources: Sequence[str] | None
    ) -> list[tuple[int, float]]:
        if n <= 0 or fts_match_expression(query_text) is None:
            return []
        terms = list(dict.fromkeys(tokenize(query_text)))[:_MAX_TERMS]
        params: dict[str, Any] = {"terms": terms, "n": n}
        where = ""
        if sources is not None:
            where = f"WHERE p.id IN ({_SOURCE_FILTER})"
            params["sources"] = list(sources)
        found = self._rows(_BM25.format(where=where), params)
        return [(int(rowid), float(score)) for rowid, score in found]

    # -- check -----------------------------------------------------------------------------------

    def integrity_problems(self) -> list[str]:
        return []  # the server keeps its own files consistent; rows are checked below

    def missing_tables(self) -> list[str]:
        present = {
            name
            for (name,) in self._rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (self._schema,),
            )
        }
        return sorted(REQUIRED_TABLES - present)

    def chunk_rows(self) -> Iterator[ChunkRow]:
        for row in self._rows(
            "SELECT chunk_id, doc_id, position, text, page, heading, embed_text, metadata, vector, "
            "checksum FROM chunks ORDER BY id"
        ):
            yield (*row[:8], bytes(row[8]), row[9])

    def orphan_chunks(self) -> int:
        return int(
            self._rows(
                "SELECT count(*) FROM chunks c "
                "WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = c.doc_id)"
            )[0][0]
        )

    def keyword_problems(self) -> list[str]:
        """Postings, term frequencies and totals recomputed from each chunk's tokens."""
        missing, unknown, differing = self._rows(
            "WITH expected AS (SELECT c.id, t.term, count(*) AS tf, max(c.token_count) AS dl "
            "FROM chunks c CROSS JOIN LATERAL unnest(string_to_array(c.tokens, ' ')) AS t(term) "
            "WHERE t.term <> '' GROUP BY c.id, t.term) "
            "SELECT count(*) FILTER (WHERE p.id IS NULL), count(*) FILTER (WHERE e.id IS NULL), "
            "count(*) FILTER (WHERE e.tf <> p.tf OR e.dl <> p.dl) "
            "FROM expected e FULL JOIN postings p ON p.id = e.id AND p.term = e.term"
        )[0]
        problems = []
        if missing or unknown or differing:
            problems.append(
                f"keyword index out of step: {missing} chunks missing, {unknown} unknown entries"
                + (f", {differing} with other counts" if differing else "")
            )
        wrong_df = self._rows(
            "SELECT count(*) FROM (SELECT term, count(*) AS n FROM postings GROUP BY term) p "
            "FULL JOIN terms t USING (term) WHERE coalesce(p.n, 0) <> coalesce(t.df, 0)"
        )[0][0]
        if wrong_df:
            problems.append(f"keyword index: {wrong_df} terms have a wrong document frequency")
        chunks, tokens, next_id, real_chunks, real_tokens, top = self._rows(
            "SELECT t.chunks, t.tokens, t.next_id, count(c.id), coalesce(sum(c.token_count), 0), "
            "coalesce(max(c.id), 0) FROM totals t LEFT JOIN chunks c ON true "
            "GROUP BY t.chunks, t.tokens, t.next_id"
        )[0]
        if (chunks, tokens) != (real_chunks, real_tokens) or next_id <= top:
            problems.append(
                f"keyword index totals out of step: {chunks} chunks and {tokens} tokens counted, "
                f"{real_chunks} and {real_tokens} stored"
            )
        return problems

    def rowids(self) -> np.ndarray:
        return np.fromiter((r for (r,) in self._rows("SELECT id FROM chunks")), dtype=np.int64)

    def vectors_by_rowid(self, ids: np.ndarray) -> list[bytes]:
        found = dict(
            self._rows("SELECT id, vector FROM chunks WHERE id = ANY(%s)", ([int(i) for i in ids],))
        )
        return [bytes(found[int(i)]) for i in ids]


@contextmanager
def _missing_as_damage(name: str) -> Iterator[None]:
    """A KB whose schema or tables are gone (dropped by hand, or deleted on another host)."""
    import psycopg

    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        first = str(exc).strip().splitlines()[0]
        raise KBDamaged(f"knowledge base {name} is damaged or was deleted: {first}") from exc
