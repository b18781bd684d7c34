"""The PostgreSQL layout: a registry of KBs, and one schema per KB holding its rows.

`kbqa_kbs` maps a KB's name to its numeric id (the key of its advisory write lock) and a
uid; the KB's tables live in schema `kb_<uid>`. A new uid per creation means a KB deleted
and created again under its name never meets an older one's rows or cached FAISS files.

The keyword index is BM25 as SQLite's FTS5 computes it, kept as postings: one row per
(term, chunk) with the term's frequency in the chunk and the chunk's length, each term's
document frequency in `terms`, and the totals (chunks, tokens) in `totals`, all written in
the same transaction as the chunks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kbqa.storage import pg_pool
from kbqa.storage.errors import KBExists, KBNotFound
from kbqa.storage.pg_lock import LOCK_CLASS

if TYPE_CHECKING:
    import psycopg

REGISTRY = """
CREATE TABLE IF NOT EXISTS kbqa_kbs (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    uid text NOT NULL UNIQUE
)
"""

# chunks.id is the FAISS id, never reused (totals.next_id only grows), as in SQLite.
KB_TABLES = """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE documents (
    doc_id text PRIMARY KEY,
    path text NOT NULL UNIQUE,
    root text NOT NULL,
    source text NOT NULL,
    content_hash text NOT NULL,
    size bigint NOT NULL,
    mtime double precision NOT NULL
);
CREATE TABLE chunks (
    id bigint PRIMARY KEY,
    chunk_id text NOT NULL UNIQUE,
    doc_id text NOT NULL REFERENCES documents(doc_id),
    position integer NOT NULL,
    text text NOT NULL,
    page integer,
    heading text,
    embed_text text NOT NULL,
    metadata text NOT NULL DEFAULT '{}',
    vector bytea NOT NULL,
    checksum text NOT NULL,
    tokens text NOT NULL,
    token_count integer NOT NULL
);
CREATE INDEX chunks_by_doc ON chunks(doc_id, position);
CREATE INDEX documents_by_source ON documents(source);
CREATE TABLE postings (
    term text NOT NULL,
    id bigint NOT NULL,
    tf integer NOT NULL,
    dl integer NOT NULL,
    PRIMARY KEY (term, id) INCLUDE (tf, dl)
);
CREATE TABLE terms (term text PRIMARY KEY, df integer NOT NULL);
CREATE TABLE totals (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    chunks bigint NOT NULL,
    tokens bigint NOT NULL,
    next_id bigint NOT NULL
);
INSERT INTO totals (chunks, tokens, next_id) VALUES (0, 0, 1)
"""
REQUIRED_TABLES = frozenset({"meta", "documents", "chunks", "postings", "terms", "totals"})


def schema_name(uid: str) -> str:
    assert uid.isalnum() and uid.isascii(), uid  # a uuid4 hex: safe as an identifier
    return f"kb_{uid}"


def ensure_registry(conn: psycopg.Connection[Any]) -> None:
    """Create the registry once per database (concurrent first users wait for each other)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS,))
        conn.execute(REGISTRY)


def list_names(url: str) -> list[str]:
    with pg_pool.connection(url) as conn:
        ensure_registry(conn)
        return sorted(name for (name,) in conn.execute("SELECT name FROM kbqa_kbs"))


def lookup(url: str, name: str) -> tuple[int, str]:
    """(id, uid) of KB `name`; KBNotFound if the database has no such KB."""
    with pg_pool.connection(url) as conn:
        ensure_registry(conn)
        row = conn.execute("SELECT id, uid FROM kbqa_kbs WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise KBNotFound(f"knowledge base {name} does not exist")
    return int(row[0]), str(row[1])


def create(url: str, name: str, uid: str, meta: dict[str, str]) -> None:
    """Register KB `name` with its schema, tables and meta in one transaction."""
    import psycopg

    with pg_pool.connection(url) as conn:
        ensure_registry(conn)
        try:
            with conn.transaction():
                conn.execute("INSERT INTO kbqa_kbs (name, uid) VALUES (%s, %s)", (name, uid))
                schema = schema_name(uid)
                conn.execute(f"CREATE SCHEMA {schema}")
                conn.execute(f"SET LOCAL search_path TO {schema}")
                for statement in KB_TABLES.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO meta (key, value) VALUES (%s, %s)", sorted(meta.items())
                    )
        except psycopg.errors.UniqueViolation as exc:
            raise KBExists(f"knowledge base {name} already exists") from exc


def drop(url: str, kb_id: int, uid: str) -> None:
    """Drop a KB's schema and registry row in one transaction (the caller holds its lock)."""
    with pg_pool.connection(url) as conn, conn.transaction():
        conn.execute(f"DROP SCHEMA IF EXISTS {schema_name(uid)} CASCADE")
        conn.execute("DELETE FROM kbqa_kbs WHERE id = %s", (kb_id,))
