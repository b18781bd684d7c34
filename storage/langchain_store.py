"""A LangChain VectorStore over a KnowledgeBase (the only module here that imports LangChain).

Documents added through LangChain have no file behind them: each becomes a one-chunk
synthetic document with doc_id and path `langchain:<id>`, whose chunk id is the LangChain
id, so adding again with the same id replaces it (upsert) and deleting by id removes it.
Their metadata round-trips verbatim (it must be JSON-serialisable). Chunks ingested from
files come back with metadata describing their origin (source, doc_id, page, heading, kb).

Scores are relevances in 0..1 (the dense cosine of the chunk and the query, clipped).
`similarity_search` is the KB's hybrid search (dense + BM25 fused) unless hybrid=False.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from kbqa.storage.errors import KBNotFound
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.types import ChunkRecord, DocumentUpsert, SearchHit

SYNTHETIC_PREFIX = "langchain:"


class KBVectorStore(VectorStore):
    def __init__(
        self,
        kb: KnowledgeBase,
        embedding: Embeddings,
        *,
        hybrid: bool = True,
        candidates: int = 30,
    ) -> None:
        self.kb = kb
        self._embedding = embedding
        self._hybrid = hybrid
        self._candidates = candidates

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # -- writing ---------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
        if not texts:
            return []
        given: list[str | None] = list(ids) if ids is not None else [None] * len(texts)
        final_ids = [i or uuid.uuid4().hex for i in given]
        vectors = np.asarray(self._embedding.embed_documents(texts), dtype=np.float32)
        upserts = [
            _synthetic_document(chunk_id, text, dict(metadata), vector)
            for chunk_id, text, metadata, vector in zip(
                final_ids, texts, metadatas or [{}] * len(texts), vectors, strict=True
            )
        ]
        self.kb.sync(upserts, [])  # one commit; a fixed chunk id replaces its old chunk
        return final_ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None) or [doc.id for doc in documents]
        return self.add_texts(
            [doc.page_content for doc in documents],
            [doc.metadata for doc in documents],
            ids=ids,
            **kwargs,
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete chunks by id; unknown ids are ignored. Refuses to delete everything."""
        if ids is None:
            raise ValueError("pass the ids to delete; a whole KB is deleted with `kbqa kb delete`")
        self.kb.remove_chunks(list(ids))
        return True

    # -- reading ---------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_to_document(hit) for hit in self.kb.get_chunks(list(ids))]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """(document, relevance in 0..1), in fused order."""
        vector = self._embedding.embed_query(query)
        hits = self.kb.search(
            np.asarray(vector, dtype=np.float32),
            query if self._hybrid else "",
            k,
            candidates=max(self._candidates, k),
            sources=_sources(filter),
        )
        return [(_to_document(hit), hit.score) for hit in hits]

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = self._dense(embedding, k, filter)
        return [_to_document(hit) for hit in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return _identity  # scores are already relevances in 0..1

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter=filter, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = self._dense(embedding, max(fetch_k, k), filter)
        if not hits:
            return []
        stored = self.kb.vectors([hit.chunk_id for hit in hits])
        hits = [hit for hit in hits if hit.chunk_id in stored]  # deleted meanwhile
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32),
            np.stack([stored[hit.chunk_id] for hit in hits]).tolist(),
            lambda_mult=lambda_mult,
            k=k,
        )
        return [_to_document(hits[i]) for i in chosen]

    def _dense(
        self, embedding: list[float], k: int, filter: dict[str, Any] | None
    ) -> list[SearchHit]:
        query = np.asarray(embedding, dtype=np.float32)
        return self.kb.search(query, "", k, candidates=k, sources=_sources(filter))

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        kbs_dir: Path | str | None = None,
        kb_name: str = "default",
        embedding_name: str | None = None,
        **kwargs: Any,
    ) -> KBVectorStore:
        """Open KB `kb_name` under `kbs_dir` (created if missing, sized by the embedding) and add
        the texts. `embedding_name` is recorded in a new KB (default: the class name)."""
        if kbs_dir is None:
            raise ValueError("from_texts needs kbs_dir=, the folder that holds knowledge bases")
        kbs_dir = Path(kbs_dir)
        try:
            kb = KnowledgeBase.open(kbs_dir, kb_name)
        except KBNotFound:
            dim = len(embedding.embed_query("dimension probe"))
            name = embedding_name or type(embedding).__name__
            kb = KnowledgeBase.create(kbs_dir, kb_name, embedding=name, dim=dim)
        store = cls(kb, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _identity(score: float) -> float:
    return score


def _sources(filter: dict[str, Any] | None) -> list[str] | None:
    """LangChain filters reduce to the KB's `sources` filter (applied before the k cut)."""
    if not filter:
        return None
    unknown = set(filter) - {"source"}
    if unknown:
        raise ValueError(f"only a 'source' filter is supported, not {sorted(unknown)}")
    wanted = filter["source"]
    return [wanted] if isinstance(wanted, str) else [str(s) for s in wanted]


def _synthetic_document(
    chunk_id: str, text: str, metadata: dict[str, Any], vector: np.ndarray
) -> DocumentUpsert:
    source = metadata.get("source")
    page = metadata.get("page")
    return DocumentUpsert(
        path=SYNTHETIC_PREFIX + chunk_id,
        root=SYNTHETIC_PREFIX,
        source=str(source) if source is not None else SYNTHETIC_PREFIX + chunk_id,
        content_hash=hashlib.sha256(text.encode()).hexdigest(),
        size=len(text.encode()),
        mtime=time.time(),
        chunks=[
            ChunkRecord(
                text=text,
                page=page if isinstance(page, int) and not isinstance(page, bool) else None,
                heading=None,
                position=0,
                embed_text=text,
                chunk_id=chunk_id,
                metadata=metadata,
            )
        ],
        vectors=vector.reshape(1, -1),
        doc_id=SYNTHETIC_PREFIX + chunk_id,
    )


def _to_document(hit: SearchHit) -> Document:
    if hit.doc_id.startswith(SYNTHETIC_PREFIX):
        metadata = dict(hit.metadata)
    else:
        origin = {"source": hit.source, "doc_id": hit.doc_id, "page": hit.page, "kb": hit.kb}
        metadata = {**origin, "heading": hit.heading, **hit.metadata}
    return Document(id=hit.chunk_id, page_content=hit.text, metadata=metadata)
