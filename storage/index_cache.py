"""Keeps a KB's in-memory FAISS index in step with the database's generation.

The index for generation g is loaded from `index.<g>.faiss` when that file is sound, else
rebuilt from the vectors in the database snapshot that read g. Files are only ever written
while holding `lock`: by the writer right after its commit, or by a reader that had to
rebuild a missing file and found the lock free. For a SQLite KB that is the KB's write lock;
for a PostgreSQL KB the files are this host's own cache and `lock` is a host-local flock, so
a commit made on another host is picked up as a new generation whose file is missing here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kbqa.storage.errors import KBDamaged
from kbqa.storage.lock import WriteLock
from kbqa.storage.types import Vectors
from kbqa.storage.vector_index import (
    IndexFileError,
    IndexKind,
    VectorIndex,
    index_generations,
    index_path,
    prune_index_files,
    read_index,
    resolve_kind,
    write_index,
)

if TYPE_CHECKING:
    from kbqa.storage.store import Store

log = logging.getLogger(__name__)


class IndexCache:
    def __init__(
        self,
        kb_dir: Path,
        dim: int,
        mode: str,
        threshold: int,
        lock: WriteLock,
        *,
        kb_name: str | None = None,
        catch_up: bool = False,
    ) -> None:
        """`catch_up`: bring an older index (in memory, or this folder's newest file) forward
        by the chunk ids added and removed since, rather than rebuild it from every vector.
        For a cache that other hosts' commits make stale (PostgreSQL KBs): chunk ids are never
        reused and a chunk's row never changes, so the difference of the id sets is exact."""
        resolve_kind(mode, 0, threshold)  # reject an unknown mode up front
        self._catch_up = catch_up
        self._dir = kb_dir
        self._name = kb_name or kb_dir.name
        self._dim = dim
        self._mode = mode
        self._threshold = threshold
        self._lock = lock
        self._index: VectorIndex | None = None
        self._generation = -1

    def clear(self) -> None:
        self._index = None

    def current(self, store: Store, generation: int) -> VectorIndex:
        """The index of `generation`; call inside the transaction that read `generation`."""
        if self._index is not None and self._generation == generation:
            return self._index
        count = store.chunk_count()
        kind = resolve_kind(self._mode, count, self._threshold)
        path = index_path(self._dir, generation)
        index: VectorIndex | None = None
        missing = False
        try:
            index = read_index(path)
        except FileNotFoundError:
            missing = True
        except IndexFileError as exc:
            log.warning("%s is unreadable (%s); rebuilding it from the database", path, exc)
        if index is not None and (index.dim, index.ntotal, index.kind) != (self._dim, count, kind):
            index = None  # another kind than configured here, or not this generation's content
        if index is None and self._catch_up:
            index = self._caught_up(store, kind, count, generation)
            # Files per generation are the writer's job; a host that follows writes none.
            missing = missing and index is None
        if index is None:
            index = self._build(store, kind)
            if missing and self._lock.try_hold():
                try:
                    write_index(self._dir, generation, index)
                except OSError as exc:
                    log.warning("could not write %s: %s", path, exc)
                finally:
                    self._lock.release()
        self._index, self._generation = index, generation
        return index

    def _caught_up(
        self, store: Store, kind: IndexKind, count: int, generation: int
    ) -> VectorIndex | None:
        """An older index brought to `generation` by id differences; None where it cannot be."""
        base = self._index
        if base is None:
            older = [g for g in index_generations(self._dir) if g < generation]
            try:
                base = read_index(index_path(self._dir, older[-1])) if older else None
            except (FileNotFoundError, IndexFileError):
                base = None
        if base is None or (base.dim, base.kind) != (self._dim, kind):
            return None
        in_db = store.rowids()
        in_index = base.ids()
        removed = np.setdiff1d(in_index, in_db)
        added = np.setdiff1d(in_db, in_index)
        if len(removed) and not base.can_remove:
            return None
        base.remove(removed)
        if len(added):
            blobs = store.vectors_by_rowid(added)
            if any(len(blob) != 4 * self._dim for blob in blobs):
                return None  # damaged rows: the full build reports them
            vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(-1, self._dim)
            base.add(added, vectors)
        return base if base.ntotal == count else None

    def committed(
        self,
        store: Store,
        base: VectorIndex,
        generation: int,
        removed: list[int],
        added: list[int],
        vectors: list[Vectors],
    ) -> None:
        """Derive generation `generation` from `base` (the previous one) after a commit.

        The caller holds the write lock. Flat indexes are patched in place; HNSW graphs
        cannot delete, so a commit that removes chunks from one rebuilds it.
        """
        self._index = None  # if anything below fails, the next use rebuilds from SQLite
        try:
            index = self._derive(store, base, removed, added, vectors)
        except (RuntimeError, KBDamaged) as exc:
            # The commit stands; only the cache failed. Report it, do not fail the sync.
            log.warning("could not update the index of %s: %s", self._name, exc)
            return
        self._index, self._generation = index, generation
        try:
            # Re-entrant for a SQLite KB (its writer holds this lock already); for PostgreSQL,
            # the host's cache lock keeps `prune` from a temp file another process is writing.
            with self._lock.hold():
                write_index(self._dir, generation, index)
                # Keep the previous generation: a reader may be about to load it.
                prune_index_files(self._dir, keep_from=generation - 1)
        except OSError as exc:
            log.warning(
                "could not write the index in %s (%s); it is rebuilt on open", self._dir, exc
            )

    def _derive(
        self,
        store: Store,
        base: VectorIndex,
        removed: list[int],
        added: list[int],
        vectors: list[Vectors],
    ) -> VectorIndex:
        kind = resolve_kind(self._mode, base.ntotal - len(removed) + len(added), self._threshold)
        if kind == base.kind and (base.can_remove or not removed):
            base.remove(np.asarray(removed, dtype=np.int64))
            if added:
                base.add(np.asarray(added, dtype=np.int64), np.concatenate(vectors))
            return base
        with store.snapshot():
            return self._build(store, kind)

    def _build(self, store: Store, kind: IndexKind) -> VectorIndex:
        ids, vectors = store.read_all_vectors(self._dim, self._name)
        return VectorIndex.build(kind, self._dim, ids, vectors)
