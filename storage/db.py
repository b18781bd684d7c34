"""The SQLite side of a KB: schema, connections, transactions, meta and row checksums.

SQLite is the source of truth: documents, chunks, their vectors and the FTS5 keyword index
live in one database file in WAL mode, so one transaction commits an entire ingest and
readers in other processes keep a consistent snapshot while it runs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from kbqa.storage.errors import KBDamaged

DB_FILE = "kb.sqlite"
SCHEMA_VERSION = 1
META_KEYS = ("schema_version", "name", "backend", "embedding", "dim", "created_at", "generation")

# chunks.id is the FAISS id. AUTOINCREMENT keeps ids from ever being reused, so an id held
# in an older index generation can never name a different chunk.
# The FTS5 tokenizer only splits our pre-tokenised, space-joined text; `.`, `-` and `_`
# are token characters so "python3.9" and "chatglm2-6b" stay single terms.
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    root TEXT NOT NULL,
    source TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    heading TEXT,
    embed_text TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector BLOB NOT NULL,
    checksum TEXT NOT NULL
);
CREATE INDEX chunks_by_doc ON chunks(doc_id, position);
CREATE INDEX documents_by_source ON documents(source);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    tokens, tokenize = "unicode61 remove_diacritics 0 tokenchars '._-'"
);
"""
REQUIRED_TABLES = frozenset({"meta", "documents", "chunks", "chunks_fts"})


def connect(db_path: Path, *, create: bool = False) -> sqlite3.Connection:
    """Open the KB database; never creates a file unless `create` (mode=rw otherwise)."""
    mode = "rwc" if create else "rw"
    uri = f"file:{urllib.parse.quote(str(db_path))}?mode={mode}"
    # Autocommit mode: transactions are explicit BEGIN/COMMIT (see `transaction`), and the
    # object is shared by threads (LangChain's async methods run in an executor) under
    # KnowledgeBase's own mutex.
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit that returned survives power loss, not only a killed process.
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise KBDamaged(f"{db_path} is not a readable SQLite database ({exc})") from exc
    return conn


@contextmanager
def transaction(
    conn: sqlite3.Connection, mode: Literal["DEFERRED", "IMMEDIATE"] = "DEFERRED"
) -> Iterator[None]:
    """One transaction: DEFERRED = a consistent read snapshot, IMMEDIATE = the write lock."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def create_schema(conn: sqlite3.Connection, meta: dict[str, str]) -> None:
    with transaction(conn, "IMMEDIATE"):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))


def missing_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    present = {name for (name,) in rows}
    return sorted(REQUIRED_TABLES - present)


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {key: value for key, value in conn.execute("SELECT key, value FROM meta")}


MIN_RELEVANCE_KEY = "min_relevance"
"""Optional meta key: the KB's own refusal threshold, a float in 0..1."""


def parse_min_relevance(value: str | None) -> float | None:
    """The stored threshold, or None when absent or unreadable (meta_problems reports that)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


def meta_problems(meta: dict[str, str]) -> list[str]:
    problems = [f"meta key {key!r} is missing" for key in META_KEYS if key not in meta]
    for key in ("dim", "generation", "schema_version"):
        if key in meta and not meta[key].isdigit():
            problems.append(f"meta key {key!r} is not a number: {meta[key]!r}")
    stored = meta.get(MIN_RELEVANCE_KEY)
    if stored is not None and parse_min_relevance(stored) is None:
        problems.append(f"meta key {MIN_RELEVANCE_KEY!r} is not a number in 0..1: {stored!r}")
    if meta.get("dim", "1") == "0":
        problems.append("meta key 'dim' is 0")
    if meta.get("schema_version", str(SCHEMA_VERSION)) != str(SCHEMA_VERSION):
        problems.append(f"unsupported schema version {meta['schema_version']!r}")
    return problems


def read_generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    if row is None:
        raise KBDamaged("knowledge base meta has no generation")
    return int(row[0])


def chunk_checksum(
    chunk_id: str,
    doc_id: str,
    position: int,
    text: str,
    page: int | None,
    heading: str | None,
    embed_text: str,
    metadata: str,
    vector: bytes,
) -> str:
    """Digest of every stored field of a chunk row, so `check` can spot hand edits."""
    fields = [chunk_id, doc_id, position, text, page, heading, embed_text, metadata]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(fields, ensure_ascii=False).encode())
    digest.update(vector)
    return digest.hexdigest()


def dump_metadata(metadata: dict[str, Any]) -> str:
    # sort_keys so the checksum of a row does not depend on dict order; default=str keeps
    # a stray datetime or Path in LangChain metadata from failing the whole commit.
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str)
