"""`kbqa kb check`: find damage and hand edits in a KB without changing anything.

Each problem is reported as one line. A missing FAISS file is not a problem (it is a cache
that the next open rebuilds); an unreadable or inconsistent one is.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from storage import db
from storage.vector_index import IndexFileError, index_path, read_index

_EXAMPLES = 3
_BATCH = 10_000


def check_kb(conn: sqlite3.Connection, kb_dir: Path) -> list[str]:
    try:
        integrity = [line for (line,) in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:
        return [f"the database is unreadable: {exc}"]
    problems = [] if integrity == ["ok"] else [f"SQLite integrity: {line}" for line in integrity]
    try:
        with db.transaction(conn):  # one snapshot for all the comparisons below
            problems += _check_snapshot(conn, kb_dir)
    except sqlite3.DatabaseError as exc:
        problems.append(f"the database is unreadable: {exc}")
    return problems


def _check_snapshot(conn: sqlite3.Connection, kb_dir: Path) -> list[str]:
    missing = db.missing_tables(conn)
    if missing:
        return [f"table {table} is missing" for table in missing]
    meta = db.read_meta(conn)
    problems = db.meta_problems(meta)
    if problems:
        return problems
    dim = int(meta["dim"])
    problems += _check_chunk_rows(conn, dim)
    orphans = conn.execute(
        "SELECT count(*) FROM chunks c "
        "WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.doc_id = c.doc_id)"
    ).fetchone()[0]
    if orphans:
        problems.append(f"{orphans} chunks belong to no document")
    unindexed = conn.execute(
        "SELECT count(*) FROM chunks WHERE id NOT IN (SELECT rowid FROM chunks_fts)"
    ).fetchone()[0]
    stale = conn.execute(
        "SELECT count(*) FROM chunks_fts WHERE rowid NOT IN (SELECT id FROM chunks)"
    ).fetchone()[0]
    if unindexed or stale:
        problems.append(
            f"keyword index out of step: {unindexed} chunks missing, {stale} unknown entries"
        )
    problems += _check_index_file(conn, kb_dir, int(meta["generation"]), dim)
    return problems


def _check_chunk_rows(conn: sqlite3.Connection, dim: int) -> list[str]:
    edited: list[str] = []
    wrong_size: list[str] = []
    for row in conn.execute(
        "SELECT chunk_id, doc_id, position, text, page, heading, embed_text, metadata, vector, "
        "checksum FROM chunks ORDER BY id"
    ):
        *fields, checksum = row
        if db.chunk_checksum(*fields) != checksum:
            edited.append(str(row[0]))
        if not isinstance(row[8], bytes) or len(row[8]) != 4 * dim:
            wrong_size.append(str(row[0]))
    problems = []
    if edited:
        problems.append(
            f"{len(edited)} chunks were modified outside kbqa (checksum mismatch), "
            f"e.g. {', '.join(edited[:_EXAMPLES])}"
        )
    if wrong_size:
        problems.append(
            f"{len(wrong_size)} chunk vectors do not have dimension {dim}, "
            f"e.g. {', '.join(wrong_size[:_EXAMPLES])}"
        )
    return problems


def _check_index_file(
    conn: sqlite3.Connection, kb_dir: Path, generation: int, dim: int
) -> list[str]:
    path = index_path(kb_dir, generation)
    try:
        index = read_index(path)
    except FileNotFoundError:
        return []  # a derived cache: rebuilt from the database on the next open
    except IndexFileError as exc:
        return [f"index file {path.name} is corrupt: {exc}"]
    if index.dim != dim:
        return [f"index file {path.name} has dimension {index.dim}, the KB has {dim}"]
    in_index = index.ids()
    in_db = np.fromiter((r for (r,) in conn.execute("SELECT id FROM chunks")), dtype=np.int64)
    problems = []
    missing = np.setdiff1d(in_db, in_index)
    extra = np.setdiff1d(in_index, in_db)
    if len(missing):
        problems.append(f"index file {path.name} lacks {len(missing)} chunks of the database")
    if len(extra):
        problems.append(f"index file {path.name} has {len(extra)} ids that are not chunks")
    if len(np.unique(in_index)) != len(in_index):
        problems.append(f"index file {path.name} holds duplicate ids")
    common = np.intersect1d(in_db, in_index)
    differing = 0
    for start in range(0, len(common), _BATCH):
        ids = common[start : start + _BATCH]
        stored = _stored_vectors(conn, ids, dim)
        if stored is None:
            break  # wrong-size vectors are already reported
        differing += int((~np.isclose(index.reconstruct(ids), stored, atol=1e-5).all(axis=1)).sum())
    if differing:
        problems.append(
            f"index file {path.name} has {differing} vectors that differ from the database"
        )
    return problems


def _stored_vectors(conn: sqlite3.Connection, ids: np.ndarray, dim: int) -> np.ndarray | None:
    wanted = "[" + ",".join(str(int(i)) for i in ids) + "]"
    found = dict(
        conn.execute(
            "SELECT id, vector FROM chunks WHERE id IN (SELECT value FROM json_each(?))", (wanted,)
        )
    )
    blobs = [found[int(i)] for i in ids]
    if any(not isinstance(b, bytes) or len(b) != 4 * dim for b in blobs):
        return None
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
