"""Chunks of many files embedded together.

Embedding is most of an ingest's time, and a forward pass over 32 texts costs far less per text
than 32 passes over one: a folder of small files (two chunks each) embedded file by file runs
the model on batches of two. The queue below holds parsed documents until enough chunks wait,
then embeds them in one call (which sorts them by length, so a batch's texts pad little).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from kbqa.storage.embeddings import Embedder
from kbqa.storage.types import DocumentUpsert, Vectors

GROUP_CHUNKS = 256
"""Chunks embedded together: 8 batches of 32, enough for batches of like length; a file's
progress is reported once its group is embedded, so not many more."""

NO_VECTORS = np.empty((0, 0), dtype=np.float32)
"""The vectors of an upsert put in the queue: the queue replaces them."""


class EmbedQueue:
    """Documents waiting for their vectors; `on_done(upsert, status)` hears of each one once
    embedded, in the order they were added; `on_chunks(n, left)` of every n chunks embedded
    and how many of the group are left."""

    def __init__(
        self,
        embedder: Callable[[], Embedder],
        on_done: Callable[[DocumentUpsert, str], None],
        on_chunks: Callable[[int, int], None] | None = None,
        group_chunks: int = GROUP_CHUNKS,
    ) -> None:
        self._embedder = embedder
        self._on_done = on_done
        self._on_chunks = on_chunks
        self._group_chunks = group_chunks
        self._waiting: list[tuple[DocumentUpsert, str]] = []
        self._chunks = 0

    def add(self, upsert: DocumentUpsert, status: str) -> None:
        """Queue `upsert` (its vectors NO_VECTORS); embeds the queue once a group is full."""
        self._waiting.append((upsert, status))
        self._chunks += len(upsert.chunks)
        if self._chunks >= self._group_chunks:
            self.flush()

    def flush(self) -> None:
        """Embed everything waiting."""
        if not self._waiting:
            return
        waiting, self._waiting, self._chunks = self._waiting, [], 0
        texts = [chunk.embed_text for upsert, _ in waiting for chunk in upsert.chunks]
        vectors = self._embed(texts)  # [len(texts), dim]
        start = 0
        for upsert, status in waiting:
            end = start + len(upsert.chunks)
            self._on_done(replace(upsert, vectors=vectors[start:end]), status)
            start = end

    def _embed(self, texts: list[str]) -> Vectors:
        on_chunks = self._on_chunks
        if on_chunks is None:  # nobody listens: the plain call
            return self._embedder().embed(texts)
        left = len(texts)

        def embedded(count: int) -> None:
            nonlocal left
            left -= count
            on_chunks(count, left)

        return self._embedder().embed(texts, on_batch=embedded)
