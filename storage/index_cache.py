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

from storage.errors import KBDamaged
from storage.lock import WriteLock
from storage.types import Vectors
from storage.vector_index import (
    IndexFileError,
    IndexKind,
    VectorIndex,
    index_path,
    prune_index_files,
    read_index,
    resolve_kind,
    write_index,
)

if TYPE_CHECKING:
    from storage.store import Store

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
    ) -> None:
        resolve_kind(mode, 0, threshold)  # reject an unknown mode up front
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
