"""Knowledge-base administration shared by the CLI and the HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kbqa.settings import Settings
from storage.errors import KBDamaged
from storage.kb import KnowledgeBase
from storage.names import validate_kb_name
from storage.types import ChunkRecord, DocumentInfo


def open_kb(settings: Settings, name: str) -> KnowledgeBase:
    validate_kb_name(name)
    return KnowledgeBase.open(
        settings.kbs_dir,
        name,
        index=settings.storage.index,
        approximate_threshold=settings.storage.approximate_threshold,
        milvus_uri=settings.storage.milvus_uri or None,
    )


def list_kbs(settings: Settings) -> list[dict[str, Any]]:
    """Every KB with its backend, embedding and sizes; a damaged KB is listed as such."""
    kbs: list[dict[str, Any]] = []
    for name in KnowledgeBase.list_names(settings.kbs_dir):
        try:
            with open_kb(settings, name) as kb:
                info = kb.info()
            kbs.append(
                {
                    "name": info.name,
                    "backend": info.backend,
                    "embedding": info.embedding,
                    "documents": info.documents,
                    "chunks": info.chunks,
                    "created_at": info.created_at,
                    "min_relevance": _threshold(settings, info.min_relevance),
                    "calibrated": info.min_relevance is not None,
                }
            )
        except KBDamaged as e:
            kbs.append(
                {
                    "name": name,
                    "backend": "?",
                    "embedding": "?",
                    "documents": 0,
                    "chunks": 0,
                    "created_at": "",
                    "min_relevance": settings.retrieval.min_relevance,
                    "calibrated": False,
                    "error": str(e),
                }
            )
    return kbs


def _threshold(settings: Settings, own: float | None) -> float:
    """A KB's refusal threshold: its calibrated one, else the global retrieval.min_relevance."""
    return settings.retrieval.min_relevance if own is None else own


def check_kb(settings: Settings, name: str) -> list[str]:
    """Problems found in KB `name`; [] when healthy. A KB that cannot be opened is one problem."""
    try:
        with open_kb(settings, name) as kb:
            return kb.check()
    except KBDamaged as e:
        return [str(e)]


def list_documents(settings: Settings, name: str) -> list[dict[str, Any]]:
    with open_kb(settings, name) as kb:
        return [
            {"doc_id": doc.doc_id, "source": doc.source, "chunks": doc.chunks, "path": doc.path}
            for doc in kb.documents()
        ]


def read_document(
    settings: Settings, name: str, doc_id: str
) -> tuple[DocumentInfo, list[ChunkRecord]] | None:
    """Document `doc_id` of KB `name` with its chunks in order; None if the KB has no such id."""
    with open_kb(settings, name) as kb:
        return kb.document(doc_id)


def remove_document(settings: Settings, name: str, document: str) -> int:
    """Remove a document given by doc_id or by file path; returns how many were removed."""
    with open_kb(settings, name) as kb, kb.write_lock():
        path = Path(document).expanduser()
        key = str(path.resolve()) if path.exists() or "/" in document else document
        removed = kb.remove_documents([key])
        if not removed and key != document:
            removed = kb.remove_documents([document])
        return removed


def migrate_kb(settings: Settings, source: str, target: str, backend: str) -> dict[str, Any]:
    """Copy KB `source` into a new KB `target` on `backend`, reusing the stored vectors."""
    validate_kb_name(target)
    with open_kb(settings, source) as src:
        info = src.info()
        with (
            KnowledgeBase.create(
                settings.kbs_dir,
                target,
                embedding=info.embedding,
                dim=info.dim,
                backend=backend,
                index=settings.storage.index,
                approximate_threshold=settings.storage.approximate_threshold,
                milvus_uri=settings.storage.milvus_uri or None,
            ) as dst,
            dst.write_lock(),
        ):
            documents = list(src.iter_documents_with_vectors())
            chunks = dst.sync(documents, [])
    return {
        "from": source,
        "to": target,
        "backend": backend,
        "documents": len(documents),
        "chunks": chunks,
    }
