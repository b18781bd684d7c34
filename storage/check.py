"""`kbqa kb check`: find damage and hand edits in a KB without changing anything.

Each problem is reported as one line. A missing FAISS file is not a problem (it is a cache
that the next open rebuilds); an unreadable or inconsistent one is. The database-specific
parts (its own integrity check, the keyword index) come from the KB's `Store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kbqa.storage import db
from kbqa.storage.errors import StorageError
from kbqa.storage.vector_index import IndexFileError, index_path, read_index

if TYPE_CHECKING:
    from kbqa.storage.store import Store

_EXAMPLES = 3
_BATCH = 10_000


def check_kb(store: Store, kb_dir: Path) -> list[str]:
    problems = store.integrity_problems()
    unreadable: tuple[type[Exception], ...] = (StorageError, *store.database_errors)
    try:
        with store.snapshot():  # one snapshot for all the comparisons below
            problems += _check_snapshot(store, kb_dir)
    except unreadable as exc:
        problems.append(f"the database is unreadable: {exc}")
    return problems


def _check_snapshot(store: Store, kb_dir: Path) -> list[str]:
    missing = store.missing_tables()
    if missing:
        return [f"table {table} is missing" for table in missing]
    meta = store.read_meta()
    problems = db.meta_problems(meta)
    if problems:
        return problems
    dim = int(meta["dim"])
    problems += _check_chunk_rows(store, dim)
    orphans = store.orphan_chunks()
    if orphans:
        problems.append(f"{orphans} chunks belong to no document")
    problems += store.keyword_problems()
    problems += _check_index_file(store, kb_dir, int(meta["generation"]), dim)
    return problems


def _check_chunk_rows(store: Store, dim: int) -> list[str]:
    edited: list[str] = []
    wrong_size: list[str] = []
    for row in store.chunk_rows():
        if db.chunk_checksum(*row[:9]) != row[9]:
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


def _check_index_file(store: Store, kb_dir: Path, generation: int, dim: int) -> list[str]:
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
    in_db = store.rowids()
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
        stored = _stored_vectors(store, ids, dim)
        if stored is None:
            break  # wrong-size vectors are already reported
        differing += int((~np.isclose(index.reconstruct(ids), stored, atol=1e-5).all(axis=1)).sum())
    if differing:
        problems.append(
            f"index file {path.name} has {differing} vectors that differ from the database"
        )
    return problems


def _stored_vectors(store: Store, ids: np.ndarray, dim: int) -> np.ndarray | None:
    blobs = store.vectors_by_rowid(ids)
    if any(not isinstance(b, bytes) or len(b) != 4 * dim for b in blobs):
        return None
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
