"""Search one or several knowledge bases for a question and merge their hits.

Each KB keeps the embedding model it was built with, so the question is embedded once per
distinct model among the KBs asked. Hits from all KBs are scored with the same 0..1 relevance
(kbqa.relevance) and merged by it, the KB's own fusion score breaking ties. With
`retrieval.reranker` set, a cross-encoder (kbqa.rerank) rescores the merged candidates.

A KB whose files are damaged, or whose database cannot be reached, raises that storage error
as it is (KBDamaged, DatabaseUnavailable), so the CLI and the server report it as they do
everywhere else (exit 1; HTTP 500 `kb_damaged`, 503 `database_unavailable`). Any other storage
error while reading (a Milvus server down, a missing extra) is a ConfigError: exit 2, HTTP 503
`unavailable`, worth retrying once the service is back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kbqa.errors import ConfigError, NotFound, UsageError
from kbqa.named_documents import documents_named, named_documents, naming_terms
from kbqa.question_names import question_names
from kbqa.relevance import (
    dense_weight,
    names_held,
    query_terms,
    relevance_of,
    with_relevance,
)
from kbqa.rerank import rerank_hits
from kbqa.settings import Settings
from kbqa.storage.config import open_kb
from kbqa.storage.embeddings import Embedder, EmbeddingUnavailable, get_embedder
from kbqa.storage.errors import (
    DatabaseUnavailable,
    InvalidKBName,
    KBDamaged,
    KBNotFound,
    StorageError,
)
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.keyword import has_cjk
from kbqa.storage.names import validate_kb_name
from kbqa.storage.types import KBInfo, SearchHit, Vectors

_MIN_PER_KB = 30
"""Hits taken from each KB before the merge: re-ranking by relevance needs spares. With 12 (15
for k = 5), the English chunk answering a Chinese question sat beyond the cut, at fusion rank
18-24 of bench/eval_zh.py's corpus; 30 (the default `retrieval.candidates`, which caps it)
brings it in for the cost of scoring 15 more chunks."""
_NAMED_HITS = 10
"""Hits searched for within the documents a question names by their path (typer for
en/packages/typer.md) when the KB-wide search brought none of their chunks."""
_MAX_NAMED_DOCUMENTS = 8
"""A name that many documents share (a project's folder) says too little to search them all."""


class Retriever:
    """Opens KBs on first use and keeps them open; safe to share between threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kbs: dict[str, tuple[KnowledgeBase, tuple[int, int] | None]] = {}
        """Open KBs by name, with the identity of the directory each was opened from."""
        self._lock = threading.Lock()
        self._embedders: dict[str, Embedder] = {}
        """Embedding models by name, once loaded (get_embedder also keeps them per process)."""
        self._sources: dict[str, tuple[tuple[int, int], list[str]]] = {}
        """Each KB's document sources, with the (documents, chunks) counts they were read at."""

    def close(self) -> None:
        with self._lock:
            for kb, _ in self._kbs.values():
                kb.close()
            self._kbs.clear()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_names(self, names: Sequence[str]) -> list[str]:
        """Valid, distinct KB names in the order given; raises UsageError/NotFound otherwise
        (and a KB that cannot be read, as `_read_error` says)."""
        if not names:
            raise UsageError("no knowledge base given")
        checked: list[str] = []
        for name in names:
            try:
                valid = validate_kb_name(name)
            except InvalidKBName as e:
                raise UsageError(str(e)) from None
            if valid not in checked:
                checked.append(valid)
        for name in checked:
            self._open(name)
        return checked

    def _open(self, name: str) -> KnowledgeBase:
        with self._lock:
            cached = self._kbs.get(name)
            if cached is not None:
                kb, identity = cached
                if _identity(kb.path) == identity:
                    return kb
                kb.close()  # deleted since it was opened, perhaps created anew under its name
                del self._kbs[name]
            try:
                kb = open_kb(self.settings, name)
            except KBNotFound:
                known = KnowledgeBase.list_names(self.settings.kbs_dir)
                hint = f" (existing: {', '.join(known)})" if known else " (run kbqa ingest first)"
                raise NotFound(f"knowledge base {name} does not exist{hint}") from None
            except StorageError as e:
                raise _read_error(e) from None
            self._kbs[name] = (kb, _identity(kb.path))
            return kb

    def warm_up(self, kbs: Sequence[str]) -> None:
        """Open `kbs` and load their embedding models and the Chinese segmenter."""
        for name in self.check_names(kbs) if kbs else []:
            self._embedder(self._open(name).info().embedding, name)
        query_terms("预热 warm-up")
        question_names("预热 warm-up")

    def kb(self, name: str) -> KnowledgeBase:
        """KB `name`, opened on first use and kept open (not to be closed by the caller);
        NotFound, or a storage error as `_read_error` says."""
        return self._open(name)

    def embedder_for(self, kb: str) -> Embedder:
        """The embedding model `kb` was built with (loaded once per process)."""
        return self._embedder(self._open(kb).info().embedding, kb)

    def _embedder(self, model: str, kb_name: str) -> Embedder:
        embedder = self._embedders.get(model)  # evidence asks again after every search
        if embedder is not None:
            return embedder
        embedding = self.settings.embedding
        try:
            embedder = get_embedder(model, embedding.device, embedding.batch_size)
        except EmbeddingUnavailable as e:
            raise ConfigError(f"knowledge base {kb_name}: {e}") from None
        self._embedders[model] = embedder
        return embedder

    def _embed(self, model: str, kb_name: str, text: str) -> Vectors:
        return self._embedder(model, kb_name).embed_query(text)

    def search(
        self, query: str, kbs: Sequence[str], k: int, *, focus: str | None = None
    ) -> list[SearchHit]:
        """The `k` most relevant hits for `query` across `kbs`, most relevant first.

        Every hit carries its KB name (`hit.kb`) and its relevance (`extra["relevance"]`).
        `focus`: the newest question when `query` also holds earlier ones (kbqa.relevance).
        """
        if k <= 0:
            return []
        names = self.check_names(kbs)
        opened = [(name, self._open(name)) for name in names]
        vectors: dict[str, Vectors] = {}
        per_kb = min(max(3 * k, _MIN_PER_KB), max(self.settings.retrieval.candidates, k))
        asked = focus or query
        found: list[tuple[SearchHit, float]] = []
        for name, kb in opened:
            info = kb.info()
            model = info.embedding
            if model not in vectors:
                vectors[model] = self._embed(model, name, query)
            hits = self._search_kb(kb, vectors[model], query, per_kb)
            held = {hit.source for hit in hits}
            unseen = []
            if naming_terms(asked):  # the KB's document list is read only when it can matter
                listed = documents_named(asked, self._sources_of(kb, info))
                unseen = [source for source in listed if source not in held]
            if 0 < len(unseen) <= _MAX_NAMED_DOCUMENTS:
                seen = {hit.chunk_id for hit in hits}
                more = self._search_kb(kb, vectors[model], query, _NAMED_HITS, sources=unseen)
                hits += [hit for hit in more if hit.chunk_id not in seen]
            weight = dense_weight(query, model)
            found += [(hit, weight) for hit in hits]
        named = named_documents(asked, {hit.source for hit, _ in found})
        names_by_document = names_held(asked, [hit for hit, _ in found])
        # Neighbours for Chinese questions only: their chunks are short (chunk_size_zh) and
        # their relevance is lexical; an English question leans on the cosine, which a
        # neighbour does not change, and joined chunks only let other documents outrank
        # (bench/RESULTS.md, "Fourth round").
        around = self._neighbours([hit for hit, _ in found]) if has_cjk(asked) else {}
        merged = [
            with_relevance(
                query,
                hit,
                weight=weight,
                focus=focus,
                names=named,
                named_nearby=names_by_document[(hit.kb, hit.doc_id)],
                before=around.get(hit.chunk_id, ("", ""))[0],
                after=around.get(hit.chunk_id, ("", ""))[1],
            )
            for hit, weight in found
        ]
        merged.sort(key=lambda h: (relevance_of(h), h.extra.get("fused", 0.0)), reverse=True)
        if self.settings.retrieval.reranker:  # a cross-encoder reorders all the candidates
            merged = rerank_hits(self.settings, query, merged)
        return merged[:k]

    def _search_kb(
        self,
        kb: KnowledgeBase,
        vector: Vectors,
        query: str,
        k: int,
        sources: list[str] | None = None,
    ) -> list[SearchHit]:
        try:
            return kb.search(
                vector, query, k, candidates=self.settings.retrieval.candidates, sources=sources
            )
        except StorageError as e:
            raise _read_error(e) from None

    def _neighbours(self, hits: Sequence[SearchHit]) -> dict[str, tuple[str, str]]:
        """By chunk id of each hit: the texts of the chunks just before and after it in its
        document ("" at either end). Relevance scores a hit with each of them too (see
        "Neighbours" in kbqa.relevance): a short Chinese chunk often holds half an answer."""
        ids_by_document: dict[tuple[str, str], set[str]] = {}
        for hit in hits:
            ids_by_document.setdefault((hit.kb, hit.doc_id), set()).add(hit.chunk_id)
        texts: dict[str, tuple[str, str]] = {}
        for (name, doc_id), ids in ids_by_document.items():
            try:
                found = self._open(name).around(doc_id, ids)
            except (NotFound, ConfigError, StorageError):
                continue  # gone since it was searched: each hit is scored alone
            for chunk_id, around in found.items():
                before, after = around.before, around.after
                texts[chunk_id] = (before.text if before else "", after.text if after else "")
        return texts

    def _sources_of(self, kb: KnowledgeBase, info: KBInfo) -> list[str]:
        """`kb`'s document sources, read again when its counts of documents or chunks change."""
        counts = (info.documents, info.chunks)
        with self._lock:
            cached = self._sources.get(kb.name)
        if cached is not None and cached[0] == counts:
            return cached[1]
        sources = [document.source for document in kb.documents()]
        with self._lock:
            self._sources[kb.name] = (counts, sources)
        return sources

    def min_relevance(self, kb: str) -> float:
        """KB `kb`'s refusal threshold: its calibrated one, else retrieval.min_relevance."""
        own = self._open(kb).min_relevance()
        return self.settings.retrieval.min_relevance if own is None else own

    def set_min_relevance(self, kb: str, value: float | None) -> None:
        """Store KB `kb`'s own refusal threshold; None = back to retrieval.min_relevance."""
        self._open(kb).set_min_relevance(value)

    def relevant(self, hits: Sequence[SearchHit]) -> list[SearchHit]:
        """The hits whose relevance reaches their KB's threshold (see `min_relevance`)."""
        thresholds = {name: self.min_relevance(name) for name in {hit.kb for hit in hits}}
        return [hit for hit in hits if relevance_of(hit) >= thresholds[hit.kb]]


def hit_json(hit: SearchHit) -> dict[str, Any]:
    """A hit as `kbqa search --json` prints it and the MCP `search` tool returns it."""
    return {
        "chunk_id": hit.chunk_id,
        "doc_id": hit.doc_id,
        "text": hit.text,
        "source": hit.source,
        "page": hit.page,
        "heading": hit.heading,
        "score": round(float(hit.score), 4),
    }


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a KB directory; None once it is gone."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _read_error(error: StorageError) -> Exception:
    """What a storage error met while reading a KB is raised as (see the module docstring)."""
    if isinstance(error, KBDamaged | DatabaseUnavailable):
        return error
    return ConfigError(str(error))
