"""KnowledgeBase: one directory `<kbs_dir>/<name>/` holding `kb.sqlite` and `index.<gen>.faiss`.

Crash safety: every change is one SQLite transaction that also bumps `meta.generation`; a
process killed before COMMIT leaves the previous state, one killed after leaves the new one.
The FAISS file is a cache derived from the vectors in SQLite, written only after the commit
and named by generation, so a reader loads the file matching the generation it read inside
its transaction, or rebuilds the index from SQLite when that file is missing or unreadable.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import numpy as np

from kbqa.storage import db, pg_kb, pg_schema, rows
from kbqa.storage.check import check_kb
from kbqa.storage.dense import DenseCache
from kbqa.storage.errors import EmbeddingMismatch, KBDamaged, KBExists, KBNotFound, StorageError
from kbqa.storage.fusion import dense_weight_for
from kbqa.storage.index_cache import IndexCache
from kbqa.storage.lock import WriteLock
from kbqa.storage.milvus_client import default_uri, new_collection_name
from kbqa.storage.milvus_index import (
    META_KEY,
    MilvusVectors,
    create_kb_collection,
    drop_kb_collection,
)
from kbqa.storage.names import (
    kb_directory,
    refuse_lookalike,
    validate_kb_name,
    validate_new_kb_name,
)
from kbqa.storage.places import database_of
from kbqa.storage.search import hybrid_search
from kbqa.storage.sqlite_store import SqliteStore
from kbqa.storage.store import Store, read_valid_meta
from kbqa.storage.types import (
    Around,
    ChunkRecord,
    DocumentInfo,
    DocumentUpsert,
    KBInfo,
    SearchHit,
    Vectors,
)
from kbqa.storage.vector_index import VectorIndex, resolve_kind, write_index

LOCK_FILE = ".lock"
# Hidden work directories of create/delete; ones this old were left by a killed process.
_LEFTOVER_PATTERNS = (".creating-*", ".deleting-*")
_LEFTOVER_AGE_SECONDS = 3600
BACKENDS = ("faiss", "milvus")


class KnowledgeBase:
    def __init__(
        self,
        name: str,
        path: Path,
        store: Store,
        meta: dict[str, str],
        lock: WriteLock,
        index: DenseCache,
    ) -> None:
        """Use `create` or `open`. `path`: the KB's folder (PostgreSQL: this host's cache)."""
        self.name = name
        self.path = path
        self._store = store
        self._meta = meta
        self._dim = int(meta["dim"])
        # One store and one cached index per object; the mutex lets threads share them.
        self._mutex = threading.RLock()
        self._lock = lock
        self._index = index
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        kbs_dir: Path,
        name: str,
        *,
        embedding: str,
        dim: int,
        backend: str = "faiss",
        index: str = "auto",
        approximate_threshold: int = 200_000,
        milvus_uri: str | None = None,
    ) -> KnowledgeBase:
        """`milvus_uri`: Milvus server or Milvus Lite file; None = `<kbs_dir>/../milvus.db`."""
        name = validate_new_kb_name(name)
        if backend not in BACKENDS:
            raise StorageError(
                f"unsupported storage backend {backend!r} (available: {', '.join(BACKENDS)})"
            )
        if dim <= 0:
            raise StorageError(f"embedding dimension must be positive, got {dim}")
        resolve_kind(index, 0, approximate_threshold)
        database = database_of(kbs_dir)
        if database is not None:
            pg_kb.create(database, name, _new_meta(name, backend, embedding, dim))
            return cls.open(kbs_dir, name, index=index, approximate_threshold=approximate_threshold)
        kbs_dir.mkdir(parents=True, exist_ok=True)
        refuse_lookalike(kbs_dir, name)
        target = kbs_dir / name
        if target.exists():
            raise KBExists(f"knowledge base {name} already exists")
        # Build in a hidden directory, then rename: a crash never leaves a half-created KB
        # under a valid name (valid names cannot start with '.').
        _sweep_leftovers(kbs_dir)
        staging = kbs_dir / f".creating-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            meta = _new_meta(name, backend, embedding, dim)
            if backend == "milvus":
                meta[META_KEY] = new_collection_name(name)
            conn = db.connect(staging / db.DB_FILE, create=True)
            try:
                db.create_schema(conn, meta)
            finally:
                conn.close()
            milvus_uri = milvus_uri or default_uri(kbs_dir)
            if backend == "milvus":  # fails here, leaving nothing behind, if Milvus is down
                create_kb_collection(staging, milvus_uri, index, approximate_threshold)
            else:
                empty = VectorIndex.build(
                    "flat", dim, np.empty(0, np.int64), np.empty((0, dim), np.float32)
                )
                write_index(staging, 0, empty)
            try:
                os.rename(staging, target)
            except OSError as exc:
                drop_kb_collection(staging, milvus_uri)
                raise KBExists(f"knowledge base {name} already exists") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cls.open(
            kbs_dir,
            name,
            index=index,
            approximate_threshold=approximate_threshold,
            milvus_uri=milvus_uri,
        )

    @classmethod
    def open(
        cls,
        kbs_dir: Path,
        name: str,
        *,
        index: str = "auto",
        approximate_threshold: int = 200_000,
        milvus_uri: str | None = None,
    ) -> KnowledgeBase:
        name = validate_kb_name(name)
        database = database_of(kbs_dir)
        if database is not None:
            opened = pg_kb.open_kb(kbs_dir, database, name, index, approximate_threshold)
            return cls(name, opened.path, opened.store, opened.meta, opened.lock, opened.dense)
        path = kb_directory(kbs_dir, name)
        if not path.is_dir():
            raise KBNotFound(f"knowledge base {name} does not exist")
        db_path = path / db.DB_FILE
        if not db_path.is_file():
            raise KBDamaged(f"knowledge base {name} is damaged: {db.DB_FILE} is missing")
        conn = db.connect(db_path)
        store = SqliteStore(conn, name)
        try:
            meta = read_valid_meta(store, name)
            lock = WriteLock(path / LOCK_FILE, f"knowledge base {name}")
            uri = milvus_uri or default_uri(kbs_dir)
            dense = _dense_cache(path, meta, lock, index, approximate_threshold, uri)
            return cls(path.name, path, store, meta, lock, dense)
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def list_names(kbs_dir: Path) -> list[str]:
        database = database_of(kbs_dir)
        if database is not None:
            return pg_schema.list_names(database)
        if not kbs_dir.is_dir():
            return []
        names = []
        for entry in kbs_dir.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue  # staging and deleted directories are hidden
            if (entry / db.DB_FILE).exists():
                names.append(entry.name)
        return sorted(names)

    @staticmethod
    def delete(kbs_dir: Path, name: str, *, milvus_uri: str | None = None) -> None:
        """Delete a KB; KBBusy if an ingest holds its lock. Atomic: a rename, then cleanup.

        A milvus KB's collection is dropped first: if Milvus cannot be reached, the KB stays.
        """
        name = validate_kb_name(name)
        database = database_of(kbs_dir)
        if database is not None:
            pg_kb.delete(kbs_dir, database, name)
            return
        path = kb_directory(kbs_dir, name)
        if not path.is_dir():
            raise KBNotFound(f"knowledge base {name} does not exist")
        doomed = kbs_dir / f".deleting-{uuid.uuid4().hex}"
        with WriteLock(path / LOCK_FILE, f"knowledge base {name}").hold(timeout=0):
            drop_kb_collection(path, milvus_uri or default_uri(kbs_dir))
            os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        _sweep_leftovers(kbs_dir)

    def write_lock(self, timeout: float | None = None) -> AbstractContextManager[None]:
        """Serialise writers across processes (flock on `<kb>/.lock`); re-entrant."""
        return self._lock.hold(timeout)

    def close(self) -> None:
        with self._mutex:
            if not self._closed:
                self._closed = True
                self._index.clear()
                self._store.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def info(self) -> KBInfo:
        with self._reading():
            meta = self._store.read_meta()
            documents, chunks = self._store.counts()
        return KBInfo(
            name=self.name,
            backend=meta["backend"],
            embedding=meta["embedding"],
            dim=int(meta["dim"]),
            created_at=meta["created_at"],
            documents=documents,
            chunks=chunks,
            min_relevance=db.parse_min_relevance(meta.get(db.MIN_RELEVANCE_KEY)),
        )

    def min_relevance(self) -> float | None:
        """The KB's own refusal threshold (`kbqa eval --calibrate`); None = the global default.

        Read from the database on every call, so a server sees a calibration made meanwhile by
        another process without reopening the KB."""
        with self._reading():
            meta = self._store.read_meta()
        return db.parse_min_relevance(meta.get(db.MIN_RELEVANCE_KEY))

    def set_min_relevance(self, value: float | None) -> None:
        """Store the KB's own refusal threshold (0..1), or forget it with None."""
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"min_relevance must be within 0..1, got {value}")
        with self._mutex, self._lock.hold():
            self._ensure_open()
            with self._store.write():
                stored = None if value is None else repr(float(value))
                self._store.set_meta(db.MIN_RELEVANCE_KEY, stored)

    def documents(self) -> list[DocumentInfo]:
        with self._reading():
            return self._store.documents()

    def document(self, doc_id: str) -> tuple[DocumentInfo, list[ChunkRecord]] | None:
        """One document and its chunks in reading order, from one snapshot; None if unknown."""
        with self._reading():
            info, found = self._store.document(doc_id)
        if info is None:
            return None
        chunks = [
            ChunkRecord(text, page, heading, position, embed, chunk_id, json.loads(meta))
            for chunk_id, position, text, page, heading, embed, meta in found
        ]
        doc_id, path, root, source, content_hash, size, mtime = info
        document = DocumentInfo(doc_id, path, root, source, content_hash, size, mtime, len(chunks))
        return document, chunks

    def around(self, doc_id: str, chunk_ids: Collection[str]) -> dict[str, Around]:
        """By chunk id, each of `chunk_ids` in document `doc_id` with its neighbours in reading
        order (one read of the document); ids not in it, or an unknown document, are left out.
        A short chunk often holds half an answer: the caption closes one, the table opens the
        next (kbqa.relevance and kbqa.neighbours read them)."""
        document = self.document(doc_id)
        chunks = document[1] if document else []
        found: dict[str, Around] = {}
        for i, chunk in enumerate(chunks):
            if chunk.chunk_id is not None and chunk.chunk_id in chunk_ids:
                before = chunks[i - 1] if i > 0 else None
                after = chunks[i + 1] if i + 1 < len(chunks) else None
                found[chunk.chunk_id] = Around(before, chunk, after)
        return found

    def search(
        self,
        query_vector: np.ndarray,
        query_text: str,
        k: int,
        *,
        candidates: int = 30,
        sources: list[str] | None = None,
        dense_weight: float | None = None,
        keyword_weight: float = 1.0,
    ) -> list[SearchHit]:
        """Hybrid search. `sources` (relative sources or absolute paths) filters before the cut.

        dense_weight None = automatic (see kbqa.storage.fusion): 1.0, or 0.25 for CJK queries when
        the KB's embedding model is not Chinese-capable.
        """
        query = self._unit_query(query_vector)
        if dense_weight is None:
            dense_weight = dense_weight_for(query_text, self._meta["embedding"])
        with self._reading():
            index = self._index.current(self._store, self._store.generation())
            return hybrid_search(
                self._store,
                index,
                query,
                query_text,
                k,
                candidates=candidates,
                sources=sources,
                dense_weight=dense_weight,
                keyword_weight=keyword_weight,
                kb_name=self.name,
            )

    def get_chunks(self, chunk_ids: list[str]) -> list[SearchHit]:
        """Chunks by id in the order asked, missing ids skipped; score 0."""
        with self._reading():
            found = self._store.load_chunks("chunk_id", chunk_ids, self._dim, self.name)
        return [found[i].hit for i in dict.fromkeys(chunk_ids) if i in found]

    def vectors(self, chunk_ids: list[str]) -> dict[str, Vectors]:
        """Stored unit vectors [dim] by chunk id (missing ids absent), e.g. for MMR."""
        with self._reading():
            found = self._store.load_chunks("chunk_id", chunk_ids, self._dim, self.name)
        return {str(key): chunk.vector for key, chunk in found.items()}

    def iter_documents_with_vectors(self) -> Iterator[DocumentUpsert]:
        """Every document with its chunks, ids and vectors (for `kb migrate`, no re-embedding).

        In storage order (by chunk rowid), so a copy numbers its chunks in the same relative
        order and breaks ties between equal scores the same way.
        """
        with self._reading():
            order = self._store.document_order()
        infos = {info.doc_id: info for info in self.documents()}
        for info in (infos[doc_id] for doc_id in order if doc_id in infos):
            with self._reading():
                found = self._store.chunks_with_vectors(info.doc_id)
            if not found:
                continue  # removed since the listing
            chunks = [
                ChunkRecord(text, page, heading, position, embed, chunk_id, json.loads(meta))
                for (chunk_id, position, text, page, heading, embed, meta), _ in found
            ]
            vectors = np.frombuffer(b"".join(blob for _, blob in found), np.float32)
            yield DocumentUpsert(
                path=info.path,
                root=info.root,
                source=info.source,
                content_hash=info.content_hash,
                size=info.size,
                mtime=info.mtime,
                chunks=chunks,
                vectors=vectors.reshape(len(found), self._dim),
                doc_id=info.doc_id,
            )

    def check(self) -> list[str]:
        """[] when healthy, else one line per problem."""
        with self._mutex:
            self._ensure_open()
            problems = check_kb(self._store, self.path)
            if isinstance(self._index, MilvusVectors):
                problems += self._index.check(self._store)
            return problems

    # -- writing ---------------------------------------------------------------------------

    def sync(
        self,
        upserts: list[DocumentUpsert],
        removals: list[str],
        *,
        chunk_removals: Sequence[str] = (),
    ) -> int:
        """Apply upserts (replacing documents with the same path), remove documents (by path or
        doc_id) and chunks (by chunk id), all in one atomic commit. Returns chunks written."""
        prepared = [rows.prepare_document(u, self._dim, self.name) for u in upserts]
        written, _, _ = self._commit(prepared, removals, chunk_removals)
        return written

    def remove_documents(self, doc_ids_or_paths: list[str]) -> int:
        """Remove documents by doc_id or path; returns how many documents were removed."""
        return self._commit([], doc_ids_or_paths, ())[1]

    def remove_chunks(self, chunk_ids: list[str]) -> int:
        """Remove chunks by id (a document left empty goes too); returns chunks removed."""
        return self._commit([], (), chunk_ids)[2]

    def _commit(
        self,
        prepared: list[rows.PreparedDocument],
        doc_selectors: Sequence[str],
        chunk_ids: Sequence[str],
    ) -> tuple[int, int, int]:
        store = self._store
        with self._mutex, self._lock.hold():
            self._ensure_open()
            with store.write():
                generation = store.generation()
                base = self._index.current(store, generation)
                doomed_docs = store.find_documents(doc_selectors)
                removed = store.delete_documents(doomed_docs)
                removed_chunks = store.delete_chunks(chunk_ids)
                removed += removed_chunks
                added: list[int] = []
                next_rowid = store.next_rowid()
                for doc in prepared:
                    # Replace by path (and by fixed ids): the old chunks and their ids vanish.
                    selectors = [doc.path, doc.doc_id] if doc.fixed_doc_id else [doc.path]
                    removed += store.delete_documents(store.find_documents(selectors))
                    removed += store.delete_chunks(doc.fixed_chunk_ids)
                    added += store.insert_document(doc, next_rowid + len(added))
                if not removed and not added:
                    return 0, 0, 0
                store.set_generation(generation + 1)
            # Committed. From here on only the derived FAISS cache is updated.
            vectors = [doc.vectors for doc in prepared]
            self._index.committed(store, base, generation + 1, removed, added, vectors)
            return len(added), len(doomed_docs), len(removed_chunks)

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """One read transaction (a consistent snapshot), under the object's mutex."""
        with self._mutex:
            self._ensure_open()
            with self._store.snapshot():
                yield

    def _ensure_open(self) -> None:
        if self._closed:
            raise StorageError(f"knowledge base {self.name} is closed")

    def _unit_query(self, query_vector: np.ndarray) -> Vectors:
        query = np.asarray(query_vector, dtype=np.float32).reshape(-1)  # [dim]
        if query.shape[0] != self._dim:
            raise EmbeddingMismatch(
                f"knowledge base {self.name} stores {self._dim}-dimensional vectors "
                f"(embedding {self._meta['embedding']}); the query vector has {query.shape[0]}"
            )
        norm = float(np.linalg.norm(query))
        return query / norm if norm > 0 else query


def _dense_cache(
    path: Path, meta: dict[str, str], lock: WriteLock, index: str, threshold: int, milvus_uri: str
) -> DenseCache:
    """The KB's vector backend: a FAISS file cache, or a Milvus collection (milvus KBs)."""
    dim = int(meta["dim"])
    if meta["backend"] != "milvus":
        return IndexCache(path, dim, index, threshold, lock)
    if not meta.get(META_KEY):
        raise KBDamaged(f"knowledge base {path.name} is damaged: meta key {META_KEY!r} is missing")
    return MilvusVectors(path, milvus_uri, meta[META_KEY], dim, index, threshold, lock)


def _new_meta(name: str, backend: str, embedding: str, dim: int) -> dict[str, str]:
    return {
        "schema_version": str(db.SCHEMA_VERSION),
        "name": name,
        "backend": backend,
        "embedding": embedding,
        "dim": str(dim),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generation": "0",
    }


def _sweep_leftovers(kbs_dir: Path) -> None:
    now = time.time()
    for pattern in _LEFTOVER_PATTERNS:
        for leftover in kbs_dir.glob(pattern):
            try:
                if now - leftover.stat().st_mtime > _LEFTOVER_AGE_SECONDS:
                    shutil.rmtree(leftover, ignore_errors=True)
            except FileNotFoundError:
                continue  # another process swept it first
