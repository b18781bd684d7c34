"""The Milvus side of a KB: its dense k-NN in one Milvus collection, derived from SQLite.

SQLite stays the KB's source of truth (documents, chunks, vectors, the keyword index), so
sync, delete, keyword search and `check` behave exactly as with FAISS; only the k-NN runs
in Milvus. The collection is named when the KB is created (kept in its meta) and holds one
row per chunk with its document's `source` and `path`, so a `sources` filter is evaluated by
Milvus before the k cut (see kbqa.storage.milvus_collection).

Consistency: the collection's `kbqa.generation` stamp names the SQLite generation its rows
reflect. Milvus is only written under the KB write lock, and the stamp goes last. A collection
that is missing or behind (a writer died between its commit and the Milvus update; the URI now
points to another Milvus) is reconciled with the latest SQLite state by the next user that gets
the lock: rows whose id is gone from SQLite, or whose chunk checksum differs, are deleted, and
chunks missing from Milvus are inserted. Readers never take a collection back to an older
generation (their snapshot may just be older than another process's commit); a writer that
finds any stamp but the one it built on reconciles all rows (a restored backup, whose ids may
name other chunks than the collection's).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from kbqa.storage import db
from kbqa.storage.dense import Ids
from kbqa.storage.errors import StorageError
from kbqa.storage.lock import WriteLock
from kbqa.storage.milvus_client import acquire, milvus_errors, release
from kbqa.storage.milvus_collection import Collection
from kbqa.storage.sqlite_store import SqliteStore
from kbqa.storage.store import Store
from kbqa.storage.types import Vectors
from kbqa.storage.vector_index import HNSW_EF_SEARCH, IndexKind, resolve_kind

log = logging.getLogger(__name__)

META_KEY = "milvus_collection"
MAX_TOPK = 16_384  # Milvus' limit on one search's k


def source_filter(sources: Sequence[str]) -> str:
    """Milvus boolean expression for chunks whose document has one of these sources or paths.

    JSON string literals are valid Milvus string literals (quotes and backslashes escaped).
    """
    values = json.dumps(list(sources), ensure_ascii=False)
    return f"source in {values} or path in {values}"


class MilvusIndex:
    """One KB's collection as hybrid search uses it (see kbqa.storage.dense.DenseIndex)."""

    def __init__(self, collection: Collection, uri: str, kind: IndexKind, exists: bool) -> None:
        self._collection = collection
        self._uri = uri
        self.kind = kind
        self.exists = exists

    @property
    def dim(self) -> int:
        return self._collection.dim

    def search(
        self,
        query: Vectors,
        n: int,
        allowed: Ids | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[tuple[int, float]]:
        if n <= 0 or not self.exists or (allowed is not None and len(allowed) == 0):
            return []
        if sources is not None:
            expression = source_filter(sources)
        elif allowed is not None:
            expression = f"id in {json.dumps([int(i) for i in allowed])}"
        else:
            expression = ""
        params: dict[str, object] = {"metric_type": "IP"}
        if self.kind == "hnsw":
            params["params"] = {"ef": max(HNSW_EF_SEARCH, 2 * n)}
        vector = np.asarray(query, dtype=np.float32).reshape(-1).tolist()  # [dim]
        with milvus_errors(self._uri):
            found = self._collection.client.search(
                self._collection.name,
                data=[vector],
                limit=min(n, MAX_TOPK),
                filter=expression,
                search_params=params,
                output_fields=[],
            )
        return [(int(hit["id"]), float(hit["distance"])) for hit in found[0]]


class MilvusVectors:
    """Keeps a KB's Milvus collection in step with SQLite (see kbqa.storage.dense.DenseCache)."""

    def __init__(
        self,
        kb_dir: Path,
        uri: str,
        collection: str,
        dim: int,
        mode: str,
        threshold: int,
        lock: WriteLock,
    ) -> None:
        resolve_kind(mode, 0, threshold)  # reject an unknown mode up front
        self._dir = kb_dir
        self._uri = uri
        self._name = collection
        self._dim = dim
        self._mode = mode
        self._threshold = threshold
        self._lock = lock
        # Connected on first use: `kb list` and `info` never need Milvus.
        self._collection: Collection | None = None
        self._loaded = False  # checked once per connection
        self._index: MilvusIndex | None = None
        self._generation = -1

    def clear(self) -> None:
        self._index, self._generation = None, -1
        if self._collection is not None:
            self._collection, self._loaded = None, False
            release(self._uri)

    def create_collection(self) -> None:
        """The empty collection of a new KB, stamped generation 0."""
        collection = self._connect()
        with milvus_errors(self._uri):
            collection.create(resolve_kind(self._mode, 0, self._threshold))
            collection.set_stamp(0)

    def drop(self) -> None:
        collection = self._connect()
        with milvus_errors(self._uri):
            collection.drop()

    def current(self, store: Store, generation: int) -> MilvusIndex:
        """The collection for a reader of `generation`; brought forward first if it is behind.

        A collection ahead of `generation` is used as it is (this snapshot is older than
        another process's commit, or this KB directory is a lagging copy): readers never
        take it back. When another process holds the lock (its writer is updating the
        collection now) it is used as it is too, and looked at again on the next call. Ids
        that the snapshot lacks are skipped by hybrid search.
        """
        if self._index is not None and self._generation == generation:
            return self._index
        collection = self._connect()
        with milvus_errors(self._uri):
            stamp = collection.stamp()
            if stamp is not None and not self._loaded:
                collection.load()
                self._loaded = True
            if (stamp is None or stamp < generation) and self._try_lock():
                try:
                    stamp = self._reconcile(collection, rewind=False)
                finally:
                    self._lock.release()
            exists = stamp is not None
            kind = collection.kind() if exists else "flat"
            index = MilvusIndex(collection, self._uri, kind, exists)
        self._index = index
        self._generation = generation if stamp is not None and stamp >= generation else -1
        return index

    def committed(
        self,
        store: Store,
        base: MilvusIndex,
        generation: int,
        removed: list[int],
        added: list[int],
        vectors: list[Vectors],
    ) -> None:
        """Apply a commit's removals and additions, then stamp `generation`.

        The caller holds the write lock and got `base` from `current` inside the commit. When
        the collection held exactly that previous generation, the commit's rows are applied
        (copied from SQLite, which has them; `vectors` is not needed); otherwise the whole
        collection is reconciled with this commit. If Milvus fails here, SQLite keeps the
        commit, the stamp stays behind and the next user reconciles the collection.
        """
        del vectors
        conn = _sqlite(store)
        previous, self._index, self._generation = self._generation, None, -1
        collection = self._connect()
        try:
            with milvus_errors(self._uri):
                if previous < 0 or collection.stamp() != previous:
                    self._reconcile(collection, rewind=True)
                    kind = collection.kind()
                else:
                    collection.delete(removed)
                    with db.transaction(conn):
                        collection.insert_from_db(conn, added)
                        count = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
                    kind = resolve_kind(self._mode, count, self._threshold)
                    if kind != base.kind:
                        collection.reindex(kind)
                    collection.set_stamp(generation)
        except StorageError as exc:
            log.warning("Milvus collection %s is behind (%s); reconciled on use", self._name, exc)
            return
        self._index, self._generation = MilvusIndex(collection, self._uri, kind, True), generation

    def check(self, store: Store) -> list[str]:
        """Problems of a collection stamped with the current generation (read-only).

        A missing or stale collection is no problem: it is derived, and reconciled on use.
        """
        name = f"Milvus collection {self._name}"
        conn = _sqlite(store)
        try:
            collection = self._connect()
            with milvus_errors(self._uri), db.transaction(conn):
                in_db = {rowid for (rowid,) in conn.execute("SELECT id FROM chunks")}
                if collection.stamp() != db.read_generation(conn):
                    return []
                collection.load()
                dim = collection.stored_dim()
                if dim != self._dim:
                    return [f"{name} has dimension {dim}, the KB has {self._dim}"]
                in_milvus = set(collection.ids())
                differing = collection.count_differing(conn, sorted(in_milvus & in_db))
        except StorageError as exc:
            return [str(exc)]
        problems = []
        if missing := len(in_db - in_milvus):
            problems.append(f"{name} lacks {missing} chunks of the database")
        if extra := len(in_milvus - in_db):
            problems.append(f"{name} has {extra} ids that are not chunks")
        if differing:
            problems.append(f"{name} has {differing} vectors that differ from the database")
        return problems

    def _connect(self) -> Collection:
        if self._collection is None:
            self._collection = Collection(acquire(self._uri), self._name, self._dim, self._dir.name)
        return self._collection

    def _try_lock(self) -> bool:
        try:
            return self._lock.try_hold()
        except OSError:  # a read-only copy of the KB directory: leave Milvus to its writer
            return False

    def _reconcile(self, collection: Collection, *, rewind: bool) -> int:
        """Bring the collection to the latest committed generation; returns its stamp after.

        The caller holds the write lock, so no commit can happen meanwhile; a connection of
        its own sees the latest state even when the caller's snapshot is older. A collection
        ahead of that state is taken back only when `rewind`: a writer found a stamp other
        than the one it built on, so the stamp says nothing and the rows are compared.
        """
        with closing(db.connect(self._dir / db.DB_FILE)) as conn, db.transaction(conn):
            latest = db.read_generation(conn)
            stamp = collection.stamp()
            if not rewind and stamp is not None and stamp >= latest:
                return stamp
            wanted = dict(conn.execute("SELECT id, checksum FROM chunks").fetchall())
            kind = resolve_kind(self._mode, len(wanted), self._threshold)
            present: dict[int, str] = {}
            if collection.exists() and collection.matches_schema():
                if collection.kind() != kind:
                    collection.reindex(kind)
                present = collection.checksums()
            else:
                collection.drop()
                collection.create(kind)
            # A row is kept only where the chunk with its id has the checksum it was copied from.
            collection.delete(sorted(i for i, c in present.items() if wanted.get(i) != c))
            missing = sorted(i for i, c in wanted.items() if present.get(i) != c)
            collection.insert_from_db(conn, missing)
            collection.set_stamp(latest)
            self._loaded = True
            log.info("reconciled Milvus collection %s with generation %d", self._name, latest)
            return latest


def _sqlite(store: Store) -> sqlite3.Connection:
    """Milvus KBs keep their rows in SQLite (kbqa.storage.kb refuses them with a database URL)."""
    if not isinstance(store, SqliteStore):
        raise StorageError("a milvus knowledge base keeps its rows in SQLite")
    return store.conn


def create_kb_collection(kb_dir: Path, uri: str, mode: str, threshold: int) -> None:
    """The empty collection of the new milvus KB being built in `kb_dir`."""
    vectors = _from_meta(kb_dir, uri, mode, threshold)
    if vectors is None:
        raise StorageError(f"{kb_dir} holds no milvus knowledge base")
    try:
        vectors.create_collection()
    finally:
        vectors.clear()


def drop_kb_collection(kb_dir: Path, uri: str) -> None:
    """Drop the collection of the milvus KB in `kb_dir` (nothing for a FAISS or unreadable KB)."""
    vectors = _from_meta(kb_dir, uri, "auto", 1)
    if vectors is not None:
        try:
            vectors.drop()
        finally:
            vectors.clear()


def _from_meta(kb_dir: Path, uri: str, mode: str, threshold: int) -> MilvusVectors | None:
    try:
        with closing(db.connect(kb_dir / db.DB_FILE)) as conn:
            meta = db.read_meta(conn)
    except (StorageError, sqlite3.DatabaseError):
        return None
    if meta.get("backend") != "milvus" or not meta.get(META_KEY):
        return None
    dim = int(meta["dim"]) if meta.get("dim", "").isdigit() else 0
    lock = WriteLock(kb_dir / ".lock", kb_dir.name)  # not taken: callers hold the KB's own
    return MilvusVectors(kb_dir, uri, meta[META_KEY], dim, mode, threshold, lock)
