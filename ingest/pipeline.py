"""Incremental sync of files into a knowledge base.

A document is identified by its resolved absolute path. An ingest of folder D adds new files,
replaces changed ones (by content hash) and removes only documents under D whose files are gone.
Everything one run changes is committed in a single storage transaction, under the KB's file lock.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from kbqa.ingest.batching import NO_VECTORS, EmbedQueue
from kbqa.ingest.config import IngestConfig
from kbqa.ingest.first_ingest import discard_if_left_empty
from kbqa.ingest.isolation import FileParser, parse_limits
from kbqa.ingest.loaders import SUPPORTED_EXTENSIONS
from kbqa.ingest.splitter import embed_text, split_sections
from kbqa.ingest.types import IngestUsageError, LoadError, LoadOptions
from kbqa.ingest.walk import WalkProblem, classify, walk
from kbqa.storage.config import create_kb, open_kb
from kbqa.storage.embeddings import DEFAULT_EMBEDDING, Embedder, get_embedder
from kbqa.storage.errors import EmbeddingMismatch, KBNotFound
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.names import validate_kb_name, validate_new_kb_name
from kbqa.storage.types import ChunkRecord, DocumentInfo, DocumentUpsert


@dataclass
class IngestReport:
    kb: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Progress(Protocol):
    """What a front end (a terminal progress bar, an HTTP job) learns while an ingest runs.

    Two more methods are optional, called only on front ends that define them:
    `page_done(path, page, pages)` after each page of a paged file (OCR takes seconds a page)
    and `chunks_embedded(count, left)` after each batch of chunks is embedded.
    """

    def start(self, files: int) -> None: ...
    def file_done(self, path: str, status: str, chunks: int) -> None: ...


class _NoProgress:
    def start(self, files: int) -> None:
        pass

    def file_done(self, path: str, status: str, chunks: int) -> None:
        pass


def _load_options(settings: IngestConfig, progress: Progress, source: str) -> LoadOptions:
    page_done = getattr(progress, "page_done", None)
    return LoadOptions(
        ocr=settings.ocr.enabled,
        ocr_max_pages=settings.ocr.max_pages,
        ocr_dpi=settings.ocr.dpi,
        limits=parse_limits(settings.ingest),
        on_page=(lambda done, total: page_done(source, done, total)) if page_done else None,
    )


@dataclass(frozen=True)
class _Candidate:
    path: Path
    """Resolved absolute path: the document's identity."""
    root: Path
    source: str


def collect_files(paths: list[Path]) -> tuple[list[_Candidate], list[Path], list[WalkProblem]]:
    """Files to ingest under `paths`, the folders whose vanished documents may be removed, and
    the entries that cannot be read (reported one by one; see ingest/walk.py).

    Raises IngestUsageError for a missing path, an unreadable folder argument or a folder
    without any entry to report.
    """
    candidates: dict[Path, _Candidate] = {}
    folders: list[Path] = []
    problems: list[WalkProblem] = []
    for given in paths:
        path = Path(os.path.abspath(given.expanduser()))
        if not os.path.lexists(path):
            raise IngestUsageError(f"path not found: {given}")
        kind = classify(path)
        if kind == "folder":
            root = path.resolve()
            try:
                found = walk(root)
            except OSError as e:
                raise IngestUsageError(f"cannot read folder {given}: {e.strerror or e}") from None
            if not found.files and not found.problems:
                raise IngestUsageError(f"folder is empty: {given}")
            folders.append(root)
            problems.extend(found.problems)
            for file in found.files:
                real = file.resolve()
                # A file reached through a link inside the tree is named by where it really
                # is, so its `source` does not depend on which path the walk met first.
                shown = real if _within(str(real), root) else file
                candidates.setdefault(real, _Candidate(real, root, _relative(shown, root)))
        elif kind == "file":
            real = path.resolve()
            root = real.parent
            candidates.setdefault(real, _Candidate(real, root, real.name))
        else:
            assert isinstance(kind, WalkProblem)
            problems.append(kind)
    return sorted(candidates.values(), key=lambda c: str(c.path)), folders, problems


def _report_problems(report: IngestReport, problems: list[WalkProblem]) -> None:
    for problem in problems:
        if problem.failed:
            failure = {"path": str(problem.path), "error": problem.message}
            report.failed.append(failure | {"error_code": problem.code})
        else:
            report.skipped.append({"path": str(problem.path), "reason": problem.message})


def _relative(file: Path, root: Path) -> str:
    return Path(os.path.relpath(file, root)).as_posix()


def _within(path: str, folder: Path) -> bool:
    return path.startswith(str(folder).rstrip(os.sep) + os.sep)


def open_or_create_kb(
    settings: IngestConfig, name: str, *, embedding: str | None, backend: str | None
) -> KnowledgeBase:
    """Open KB `name`, or create it with the given (or configured) embedding and backend.

    An explicit `embedding` that differs from the one the KB was created with is refused:
    vectors from two models cannot share one index.
    """
    validate_kb_name(name)
    try:
        kb = open_kb(settings, name)
    except KBNotFound:
        validate_new_kb_name(name)  # before loading the model: a refused name fails at once
        model = embedding or settings.embedding.model
        embedder = _embedder(settings, model)
        return create_kb(settings, name, embedding=model, dim=embedder.dim, backend=backend)
    existing = kb.info().embedding
    if embedding is not None and _same_model(embedding) != _same_model(existing):
        kb.close()
        raise EmbeddingMismatch(
            f"knowledge base {name} uses embedding {existing}; it cannot change to {embedding}"
        )
    if backend is not None and backend != kb.info().backend:
        kb.close()
        raise EmbeddingMismatch(
            f"knowledge base {name} uses backend {kb.info().backend}; it cannot change to {backend}"
        )
    return kb


def _same_model(name: str) -> str:
    return DEFAULT_EMBEDDING if name in ("", DEFAULT_EMBEDDING) else name


def _embedder(settings: IngestConfig, model: str) -> Embedder:
    embedding = settings.embedding
    return get_embedder(
        model, embedding.device, embedding.batch_size, embedding.backend, settings.cache_dir
    )


def ingest_paths(
    settings: IngestConfig,
    kb_name: str,
    paths: list[Path],
    *,
    embedding: str | None = None,
    backend: str | None = None,
    progress: Progress | None = None,
    parser: FileParser | None = None,
) -> IngestReport:
    """Sync `paths` into KB `kb_name` (created on first use) and report what changed.

    `parser` loads the files (the server's shares its warm workers and carries a job's Stop);
    by default the run has one of its own (see kbqa.ingest.isolation).
    """
    if parser is None:
        with FileParser.for_run(settings) as own:
            return ingest_paths(
                settings,
                kb_name,
                paths,
                embedding=embedding,
                backend=backend,
                progress=progress,
                parser=own,
            )
    started = time.perf_counter()
    progress = progress or _NoProgress()
    candidates, folders, problems = collect_files(paths)
    report = IngestReport(kb=kb_name)
    _report_problems(report, problems)
    # Documents under a folder that could not be listed may still exist: never removed.
    kept = [p.path.resolve() for p in problems if p.unreadable_folder]
    with (
        discard_if_left_empty(settings, kb_name),
        open_or_create_kb(settings, kb_name, embedding=embedding, backend=backend) as kb,
    ):
        model = kb.info().embedding

        def embedder() -> Embedder:
            # Loaded on first use: a run where nothing changed needs no model.
            return _embedder(settings, model)

        with kb.write_lock():
            known = {doc.path: doc for doc in kb.documents()}
            progress.start(len(candidates))
            upserts: list[DocumentUpsert] = []

            def embedded(upsert: DocumentUpsert, status: str) -> None:
                upserts.append(upsert)
                progress.file_done(upsert.source, status, len(upsert.chunks))

            # Files' chunks are embedded together (kbqa.ingest.batching): small files fill batches.
            queue = EmbedQueue(embedder, embedded, getattr(progress, "chunks_embedded", None))
            for candidate in candidates:
                options = _load_options(settings, progress, candidate.source)
                upsert, status = _prepare(settings, candidate, known, report, options, parser)
                if upsert is not None:
                    queue.add(upsert, status)
                else:
                    progress.file_done(candidate.source, status, 0)
            queue.flush()
            seen = {str(c.path) for c in candidates}
            removals = [
                path
                for path in known
                if path not in seen
                and any(_within(path, folder) for folder in folders)
                and not any(_within(path, folder) for folder in kept)
            ]
            report.removed = len(removals)
            report.chunks = kb.sync(upserts, removals)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _prepare(
    settings: IngestConfig,
    candidate: _Candidate,
    known: dict[str, DocumentInfo],
    report: IngestReport,
    options: LoadOptions,
    parser: FileParser,
) -> tuple[DocumentUpsert | None, str]:
    """The upsert for one file, its vectors still to compute (None when unchanged, skipped or
    failed), and its status word."""
    shown = str(candidate.path)
    if candidate.path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        reason = f"unsupported extension {candidate.path.suffix or '(none)'}"
        report.skipped.append({"path": shown, "reason": reason})
        return None, "skipped"
    try:
        upsert = _read(settings, candidate, known, options, parser)
    except LoadError as e:
        report.failed.append({"path": shown, "error": str(e), "error_code": e.code})
        return None, "failed"
    except OSError as e:
        report.failed.append({"path": shown, "error": f"cannot read file: {e.strerror or e}"})
        return None, "failed"
    if upsert is None:
        report.unchanged += 1
        return None, "unchanged"
    if str(candidate.path) in known:
        report.updated += 1
        return upsert, "updated"
    report.added += 1
    return upsert, "added"


def _read(
    settings: IngestConfig,
    candidate: _Candidate,
    known: dict[str, DocumentInfo],
    options: LoadOptions,
    parser: FileParser,
) -> DocumentUpsert | None:
    stat = candidate.path.stat()
    previous = known.get(str(candidate.path))
    if settings.ingest.quick_check and _same_stat(previous, stat):
        return None  # not even read: a re-ingest of an unchanged folder costs a stat a file
    max_bytes = int(settings.ingest.max_file_mb * 1024 * 1024)
    content_hash = _hash_file(candidate.path, max_bytes)
    if previous is not None and previous.content_hash == content_hash:
        return None
    sections = parser.load(candidate.path, max_bytes=max_bytes, options=options)
    chunks = split_sections(
        sections,
        chunk_size=settings.ingest.chunk_size,
        chunk_size_zh=settings.ingest.chunk_size_zh,
        chunk_overlap=settings.ingest.chunk_overlap,
    )
    if not chunks:
        raise LoadError("no text found in file")
    records = [
        ChunkRecord(
            text=chunk.text,
            page=chunk.page,
            heading=chunk.heading,
            position=chunk.position,
            embed_text=embed_text(chunk, candidate.source)
            if settings.ingest.title_enhance
            else chunk.text,
        )
        for chunk in chunks
    ]
    return DocumentUpsert(
        path=str(candidate.path),
        root=str(candidate.root),
        source=candidate.source,
        content_hash=content_hash,
        size=stat.st_size,
        mtime=stat.st_mtime,
        chunks=records,
        vectors=NO_VECTORS,  # the EmbedQueue fills them in
    )


def _same_stat(previous: DocumentInfo | None, stat: os.stat_result) -> bool:
    """Size and mtime as recorded when the document was last stored (ingest.quick_check)."""
    return previous is not None and (previous.size, previous.mtime) == (
        stat.st_size,
        stat.st_mtime,
    )


def _hash_file(path: Path, max_bytes: int) -> str:
    """sha256 of the file; a file over the size limit fails before it is read whole."""
    size = path.stat().st_size
    if size > max_bytes:
        raise LoadError(
            f"file is {size / 1024 / 1024:.1f} MB, over the {max_bytes / 1024 / 1024:g} MB limit"
            " (ingest.max_file_mb)",
            code="too_large",
        )
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
