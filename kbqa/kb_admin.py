"""Knowledge-base administration shared by the CLI and the HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kbqa.ingest.first_ingest import sweep_abandoned
from kbqa.settings import Settings
from kbqa.storage.config import check_kb as check_kb  # `kbqa kb check`: the one damage check
from kbqa.storage.config import create_kb, open_kb
from kbqa.storage.errors import KBDamaged, StorageError
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.names import validate_kb_name
from kbqa.storage.pg_pool import is_database_url, redact
from kbqa.storage.places import kbs_dir_with_database
from kbqa.storage.types import ChunkRecord, DocumentInfo


def list_kbs(settings: Settings) -> list[dict[str, Any]]:
    """Every KB with its backend, embedding and sizes; a damaged KB is listed as such."""
    sweep_abandoned(settings)  # the empty KB of a first ingest that was killed is not a KB
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


SQLITE = "sqlite"
"""`kb migrate --to-database sqlite`: the SQLite files under `$KBQA_HOME/kbs`."""


def migrate_kb(
    settings: Settings, source: str, target: str, backend: str, to_database: str | None = None
) -> dict[str, Any]:
    """Copy KB `source` into a new KB `target` on `backend`, reusing the stored vectors.

    `to_database`: a PostgreSQL URL or "sqlite" puts the copy there (ids, texts, vectors and
    checksums as stored); None keeps it where `source` is (`storage.database`).
    """
    validate_kb_name(target)
    kbs_dir = settings.kbs_dir
    if to_database is not None:
        if to_database != SQLITE and not is_database_url(to_database):
            raise StorageError(
                f"--to-database must be a postgresql:// URL or {SQLITE!r}, got {to_database!r}"
            )
        database = None if to_database == SQLITE else to_database
        kbs_dir = kbs_dir_with_database(settings.home / "kbs", database)
    with open_kb(settings, source) as src:
        info = src.info()
        with (
            create_kb(
                settings,
                target,
                embedding=info.embedding,
                dim=info.dim,
                backend=backend,
                kbs_dir=kbs_dir,
            ) as dst,
            dst.write_lock(),
        ):
            documents = list(src.iter_documents_with_vectors())
            chunks = dst.sync(documents, [])
    result: dict[str, Any] = {
        "from": source,
        "to": target,
        "backend": backend,
        "documents": len(documents),
        "chunks": chunks,
    }
    if to_database is not None:
        result["database"] = to_database if to_database == SQLITE else redact(to_database)
    return result
