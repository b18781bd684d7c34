"""The lifecycle of KBs kept in PostgreSQL (create, open, list, delete); see kbqa.storage.kb.

The rows are in the database (kbqa.storage.pg_schema, kbqa.storage.pg_store); each host keeps only a
cache folder `<kbs_dir>/.postgresql/<uid>/` with the FAISS index files it derived, stamped
with their generation like a SQLite KB's. A commit made on another host is a generation this
host has no file for, so its next search rebuilds the index from the vectors in the database.
The write lock is an advisory lock in the database (kbqa.storage.pg_lock), shared by all hosts;
the cache folder's own flock only orders this host's processes writing index files.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from kbqa.storage import pg_schema
from kbqa.storage.errors import KBDamaged, StorageError
from kbqa.storage.index_cache import IndexCache
from kbqa.storage.lock import WriteLock
from kbqa.storage.pg_lock import AdvisoryLock
from kbqa.storage.pg_store import PostgresStore
from kbqa.storage.store import Store, read_valid_meta

CACHE_DIR = ".postgresql"
"""Hidden (KB names cannot start with '.'), so it never lists as a SQLite KB."""
_LOCK_FILE = ".lock"


@dataclass
class OpenedKB:
    path: Path
    store: Store
    meta: dict[str, str]
    lock: WriteLock
    dense: IndexCache


def create(database: str, name: str, meta: dict[str, str]) -> None:
    if meta["backend"] != "faiss":
        raise StorageError(
            f"the {meta['backend']} backend keeps its rows in SQLite; with storage.database "
            "set, knowledge bases use the faiss backend"
        )
    pg_schema.create(database, name, uuid.uuid4().hex, meta)


def open_kb(
    kbs_dir: Path,
    database: str,
    name: str,
    index: str,
    threshold: int,
) -> OpenedKB:
    kb_id, uid = pg_schema.lookup(database, name)
    store = PostgresStore(database, uid, name)
    meta = read_valid_meta(store, name)
    if meta["backend"] != "faiss":
        backend = meta["backend"]
        raise KBDamaged(f"knowledge base {name} is damaged: backend {backend!r} in PostgreSQL")
    cache = kbs_dir / CACHE_DIR / uid
    cache.mkdir(parents=True, exist_ok=True)
    what = f"knowledge base {name}"
    lock = WriteLock(AdvisoryLock(database, kb_id), what)
    files_lock = WriteLock(cache / _LOCK_FILE, f"the index cache of {what}")
    dense = IndexCache(
        cache, int(meta["dim"]), index, threshold, files_lock, kb_name=name, catch_up=True
    )
    return OpenedKB(cache, store, meta, lock, dense)


def delete(kbs_dir: Path, database: str, name: str) -> None:
    """Delete a KB; KBBusy if a writer on any host holds its lock."""
    kb_id, uid = pg_schema.lookup(database, name)
    with WriteLock(AdvisoryLock(database, kb_id), f"knowledge base {name}").hold(timeout=0):
        pg_schema.drop(database, kb_id, uid)
    shutil.rmtree(kbs_dir / CACHE_DIR / uid, ignore_errors=True)
