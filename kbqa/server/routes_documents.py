"""The source viewer's routes: one document's chunks, and its original file.

`GET /v1/kbs/{kb}/documents/{doc_id}` answers the document's metadata and its chunks in order
(the text that was ingested, with pages and headings); `…/content` streams the original file.
A doc_id is only ever looked up in the KB: the file served is the path the KB recorded for it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse

from kbqa.kb_admin import read_document
from kbqa.server.auth import require_api_key
from kbqa.server.errors import ERROR_RESPONSES, ApiError
from kbqa.server.originals import (
    ACTIVE_TYPES,
    SANDBOX_POLICY,
    content_disposition,
    content_type,
    file_state,
    open_original,
)
from kbqa.server.routes_kbs import KbPath
from kbqa.server.schemas import DocumentChunk, DocumentDetail, DocumentMeta
from kbqa.server.state import SettingsDep
from kbqa.settings import Settings
from kbqa.storage.types import ChunkRecord, DocumentInfo

router = APIRouter(
    tags=["knowledge bases"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)

DocIdPath = Annotated[str, Path(min_length=1, max_length=200, description="The document's id")]

MTIME_TOLERANCE_S = 0.001
"""Recorded and current modification times closer than this are the same (float round trips)."""


@router.get("/v1/kbs/{kb}/documents/{doc_id}")
def get_document(kb: KbPath, doc_id: DocIdPath, settings: SettingsDep) -> DocumentDetail:
    info, chunks = find_document(settings, kb, doc_id)
    return DocumentDetail(document=document_meta(info), chunks=[chunk_view(c) for c in chunks])


@router.get(
    "/v1/kbs/{kb}/documents/{doc_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file"}},
)
def get_document_content(
    kb: KbPath,
    doc_id: DocIdPath,
    settings: SettingsDep,
    download: Annotated[bool, Query(description="Content-Disposition: attachment")] = False,
) -> StreamingResponse:
    info, _ = find_document(settings, kb, doc_id)
    opened = open_original(info.path)
    if opened is None:
        raise ApiError(
            404,
            "original_not_found",
            f"the original file of {info.source} is no longer on the server",
        )
    media_type = content_type(info.path)
    active = media_type in ACTIVE_TYPES
    name = info.path.rsplit("/", 1)[-1]
    headers = {
        "Content-Length": str(opened.size),
        "Content-Disposition": content_disposition(name, attachment=download or active),
        "X-Content-Type-Options": "nosniff",
    }
    if active:
        headers["Content-Security-Policy"] = SANDBOX_POLICY
    return StreamingResponse(opened.blocks(), media_type=media_type, headers=headers)


def find_document(
    settings: Settings, kb: str, doc_id: str
) -> tuple[DocumentInfo, list[ChunkRecord]]:
    found = read_document(settings, kb, doc_id)
    if found is None:
        raise ApiError(404, "document_not_found", f"no document {doc_id} in knowledge base {kb}")
    return found


def document_meta(info: DocumentInfo) -> DocumentMeta:
    state = file_state(info.path)
    modified = state.available and (
        state.size != info.size or abs((state.mtime or 0.0) - info.mtime) > MTIME_TOLERANCE_S
    )
    return DocumentMeta(
        doc_id=info.doc_id,
        source=info.source,
        path=info.path,
        chunks=info.chunks,
        content_type=content_type(info.path),
        available=state.available,
        size=state.size,
        modified=modified,
    )


def chunk_view(chunk: ChunkRecord) -> DocumentChunk:
    return DocumentChunk(
        chunk_id=chunk.chunk_id or "",
        position=chunk.position,
        text=chunk.text,
        page=chunk.page,
        heading=chunk.heading,
    )
