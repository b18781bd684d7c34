"""Knowledge-base management: list, create, delete, search; documents; upload and watch jobs.

Handlers are sync `def`s: they do blocking storage work, and FastAPI runs them in its thread
pool, so searches and listings keep being served while an upload is ingested.
"""

from __future__ import annotations

import shutil
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Path, Query, UploadFile

from kbqa.ingest.pipeline import open_or_create_kb
from kbqa.kb_admin import list_documents, list_kbs, remove_document
from kbqa.server.auth import (
    AccessDep,
    forbidden,
    require_admin,
    require_api_key,
    require_write,
)
from kbqa.server.errors import CONFLICT_RESPONSE, ERROR_RESPONSES, ApiError
from kbqa.server.eval_jobs import eval_job_status
from kbqa.server.job_store import Job
from kbqa.server.jobs import remove_uploaded_file, save_uploads, uploads_dir
from kbqa.server.schemas import (
    Document,
    DocumentList,
    DocumentRemoved,
    EvalJobStatus,
    IngestResult,
    JobCreated,
    JobList,
    JobProgress,
    JobStatus,
    KbCreate,
    KbDeleted,
    KbInfo,
    KbList,
    KbName,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from kbqa.server.state import RetrieverDep, SettingsDep, StateDep
from kbqa.settings import Settings
from kbqa.storage import (
    config as storage_config,  # a module: handler names are OpenAPI operation ids
)
from kbqa.storage.errors import KBExists, KBNotFound
from kbqa.storage.kb import KnowledgeBase

router = APIRouter(
    tags=["knowledge bases"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)

KbPath = Annotated[KbName, Path(description="Knowledge base name")]


@router.get("/v1/kbs")
def get_kbs(settings: SettingsDep, access: AccessDep) -> KbList:
    kbs = [kb for kb in list_kbs(settings) if access.sees(kb["name"])]
    return KbList(kbs=[KbInfo.model_validate(kb) for kb in kbs])


@router.post(
    "/v1/kbs", status_code=201, responses=CONFLICT_RESPONSE, dependencies=[Depends(require_admin)]
)
def post_kb(body: KbCreate, settings: SettingsDep, access: AccessDep) -> KbInfo:
    if not access.sees(body.name):  # a key limited to some KBs creates only those
        raise forbidden(access, "admin")
    return create_empty_kb(settings, body)


@router.delete("/v1/kbs/{kb}", dependencies=[Depends(require_admin)])
def delete_kb(kb: KbPath, settings: SettingsDep) -> KbDeleted:
    storage_config.delete_kb(settings, kb)
    shutil.rmtree(uploads_dir(settings, kb), ignore_errors=True)
    return KbDeleted(deleted=kb)


@router.post("/v1/kbs/{kb}/search")
def search_kb(kb: KbPath, body: SearchRequest, retriever: RetrieverDep) -> SearchResponse:
    hits = retriever.search(body.query, [kb], body.top_k)
    results = [SearchResult.model_validate(hit, from_attributes=True) for hit in hits]
    return SearchResponse(query=body.query, results=results)


@router.get("/v1/kbs/{kb}/documents")
def get_documents(kb: KbPath, settings: SettingsDep) -> DocumentList:
    return DocumentList(
        documents=[Document.model_validate(d) for d in list_documents(settings, kb)]
    )


@router.delete("/v1/kbs/{kb}/documents/{doc_id}", dependencies=[Depends(require_write)])
def delete_document(
    kb: KbPath, doc_id: Annotated[str, Path(max_length=200)], settings: SettingsDep
) -> DocumentRemoved:
    remove_by_id(settings, kb, doc_id)
    return DocumentRemoved(removed=doc_id)


@router.post("/v1/kbs/{kb}/documents", status_code=202, dependencies=[Depends(require_write)])
def upload_documents(
    kb: KbPath,
    files: Annotated[
        list[UploadFile], File(min_length=1, description="Documents to add or update")
    ],
    state: StateDep,
) -> JobCreated:
    require_kb(state.settings, kb)
    max_bytes = int(state.settings.server.max_upload_mb * 1024 * 1024)
    paths = save_uploads(uploads_dir(state.settings, kb), files, max_bytes)
    return JobCreated(job_id=state.jobs.submit(kb, paths).id)


@router.get("/v1/jobs")
def list_jobs(
    state: StateDep,
    access: AccessDep,
    kind: Annotated[Literal["upload", "watch"] | None, Query(description="Only this kind")] = None,
    kb: Annotated[str | None, Query(max_length=64, description="Only this KB's jobs")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobList:
    """Upload and watched-folder jobs, newest first, of the KBs the key sees (evaluation jobs
    live in memory and are not listed)."""
    kbs = None if access.kbs is None else sorted(access.kbs)
    if kb is not None:
        kbs = [kb] if access.sees(kb) else []
    jobs = state.jobs.recent(kind=kind, kbs=kbs, limit=limit)
    return JobList(jobs=[job_status(job) for job in jobs])


@router.get("/v1/jobs/{job_id}")
def get_job(
    job_id: Annotated[str, Path(max_length=64)], state: StateDep, access: AccessDep
) -> JobStatus | EvalJobStatus:
    """An upload job, or an evaluation job (kbqa.server.eval_jobs, ids starting `eval-`);
    a job of a KB the key may not see does not exist for it."""
    if job_id.startswith("eval-"):
        evaluation = state.evals.get(job_id)
        if evaluation is not None and access.sees(evaluation.kb):
            return eval_job_status(evaluation)
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    job = state.jobs.get(job_id)
    if job is None or not access.sees(job.kb):
        raise ApiError(404, "job_not_found", f"no job {job_id}")
    return job_status(job)


def create_empty_kb(settings: Settings, body: KbCreate) -> KbInfo:
    """A new, empty KB; 409 if one of that name exists."""
    if body.name in KnowledgeBase.list_names(settings.kbs_dir):
        raise KBExists(f"knowledge base {body.name} already exists")
    with open_or_create_kb(
        settings, body.name, embedding=body.embedding, backend=body.backend
    ) as kb:
        info = kb.info()
    return KbInfo(
        name=info.name,
        backend=info.backend,
        embedding=info.embedding,
        documents=info.documents,
        chunks=info.chunks,
        created_at=info.created_at,
        min_relevance=settings.retrieval.min_relevance,
    )


def require_kb(settings: Settings, kb: str) -> None:
    if kb not in KnowledgeBase.list_names(settings.kbs_dir):
        raise KBNotFound(f"knowledge base {kb} does not exist")


def remove_by_id(settings: Settings, kb: str, doc_id: str) -> None:
    """Remove one document by doc_id, and its saved copy if it came from an upload."""
    found = [d for d in list_documents(settings, kb) if d["doc_id"] == doc_id]
    if not found:
        raise ApiError(404, "document_not_found", f"no document {doc_id} in knowledge base {kb}")
    remove_document(settings, kb, found[0]["path"])
    remove_uploaded_file(settings, kb, found[0]["path"])


def job_status(job: Job) -> JobStatus:
    return JobStatus(
        job_id=job.id,
        kb=job.kb,
        kind=job.kind,
        state=job.state,
        files=job.files,
        progress=JobProgress(
            files_total=job.files_total,
            files_done=job.files_done,
            chunks=job.chunks,
            pages_done=job.pages_done,
            current=job.current,
        ),
        result=IngestResult.model_validate(job.result) if job.result is not None else None,
        error=job.error,
        error_code=job.error_code,
    )
