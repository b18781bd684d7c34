"""Upload jobs: uploaded files are saved under `$KBQA_HOME/uploads/<kb>/` and ingested in the
background by the same incremental pipeline as `kbqa ingest`.

File names come from the client and are hostile until cleaned: only the last path component
is kept, control and format characters are dropped, a leading dot is removed, and the result
must carry a supported extension. Files are staged under a hidden name and renamed into place
only when every file of the request was received whole, so a refused request changes nothing.

Each job ingests just the paths it uploaded. A file argument's root is its parent folder, so
the pipeline never removes the KB's other uploaded documents.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Protocol

from ingest.loaders import SUPPORTED_EXTENSIONS
from ingest.pipeline import IngestReport, ingest_paths
from kbqa.server.errors import ApiError, api_error_for
from kbqa.settings import Settings
from storage.names import validate_kb_name

log = logging.getLogger("kbqa.server")

JobState = Literal["queued", "running", "done", "failed"]

MAX_NAME_BYTES = 200
"""Room under the usual 255-byte file name limit for the staging prefix and suffix."""

MAX_KEPT_JOBS = 1000
_COPY_BLOCK = 1 << 20


class UploadedFile(Protocol):
    """What the server needs of an upload (Starlette's UploadFile has it)."""

    @property
    def filename(self) -> str | None: ...
    @property
    def file(self) -> BinaryIO: ...


def uploads_dir(settings: Settings, kb: str) -> Path:
    """Where uploads to KB `kb` are kept: `$KBQA_HOME/uploads/<kb>/`."""
    return settings.home / "uploads" / validate_kb_name(kb)


def safe_filename(raw: str | None) -> str:
    """A client's file name reduced to a harmless single path component, or ApiError 422."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    # Category C: control (NUL, newlines), format (bidi overrides), surrogates, unassigned.
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = name.strip().lstrip(".").strip()
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    while stem and len(f"{stem}.{suffix}".encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    name = f"{stem}.{suffix}" if dot else stem
    if not stem or name in (".", ".."):
        raise ApiError(422, "invalid_file_name", f"unusable file name {raw!r}")
    extension = f".{suffix.lower()}" if dot else ""
    if extension not in SUPPORTED_EXTENSIONS:
        allowed = " ".join(sorted(SUPPORTED_EXTENSIONS))
        raise ApiError(
            422,
            "unsupported_type",
            f"{name}: unsupported file type {extension or '(none)'} (allowed: {allowed})",
        )
    return name


def save_uploads(folder: Path, files: Sequence[UploadedFile], max_bytes: int) -> list[Path]:
    """Save `files` into `folder` (all or none) and return their final paths.

    A file that replaces an earlier upload of the same name becomes an update of that document.
    """
    names = [safe_filename(f.filename) for f in files]
    if not names:
        raise ApiError(422, "invalid_request", "no files in the upload (multipart field 'files')")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ApiError(422, "invalid_request", f"duplicate file names: {', '.join(duplicates)}")
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, upload in zip(names, files, strict=True):
            target = _inside(folder, name)
            part = folder / f".{uuid.uuid4().hex}.part"
            staged.append((part, target))
            _copy_limited(upload.file, part, max_bytes, name)
        for part, target in staged:
            os.replace(part, target)  # replaces a symlink itself, never what it points to
    finally:
        for part, _ in staged:
            part.unlink(missing_ok=True)
    return [target for _, target in staged]


def remove_uploaded_file(settings: Settings, kb: str, path: str) -> None:
    """Delete the saved copy of a document that came from an upload (other paths are left)."""
    folder = uploads_dir(settings, kb).resolve()
    candidate = Path(path)
    if candidate.parent == folder and candidate.is_file():
        candidate.unlink(missing_ok=True)


def _inside(folder: Path, name: str) -> Path:
    target = folder / name
    if target.parent != folder or Path(os.path.normpath(target)).parent != folder:
        raise ApiError(422, "invalid_file_name", f"unusable file name {name!r}")
    return target


def _copy_limited(source: IO[bytes], target: Path, max_bytes: int, name: str) -> None:
    written = 0
    with target.open("xb") as out:
        while block := source.read(_COPY_BLOCK):
            written += len(block)
            if written > max_bytes:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"{name} is over the {max_bytes / 1024 / 1024:g} MB upload limit",
                )
            out.write(block)


@dataclass
class Job:
    id: str
    kb: str
    files: list[str]
    state: JobState = "queued"
    files_total: int = 0
    files_done: int = 0
    chunks: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)


class _JobProgress:
    """The pipeline's Progress protocol, written into a job."""

    def __init__(self, job: Job, lock: threading.Lock) -> None:
        self._job = job
        self._lock = lock

    def start(self, files: int) -> None:
        with self._lock:
            self._job.files_total = files

    def file_done(self, path: str, status: str, chunks: int) -> None:
        with self._lock:
            self._job.files_done += 1
            self._job.chunks += chunks


Ingest = Callable[..., IngestReport]


class JobManager:
    """Runs upload ingests one at a time in a background thread; keeps recent jobs in memory."""

    def __init__(self, settings: Settings, *, ingest: Ingest = ingest_paths) -> None:
        self.settings = settings
        self._ingest = ingest
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        # One worker: ingests are CPU-bound and serialised per KB by the storage lock anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbqa-ingest")

    def submit(self, kb: str, paths: list[Path]) -> Job:
        job = Job(id=uuid.uuid4().hex, kb=kb, files=[p.name for p in paths])
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        self._executor.submit(self._run, job, paths)
        return dataclasses.replace(job)

    def get(self, job_id: str) -> Job | None:
        """A snapshot of the job, or None if unknown (or forgotten long ago)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return dataclasses.replace(job) if job else None

    def shutdown(self) -> None:
        """Finish the running ingest (it commits whole or not at all); drop the queued ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for job in self._jobs.values():
                if job.state == "queued":
                    job.state, job.error = "failed", "the server shut down before this job ran"

    def _run(self, job: Job, paths: list[Path]) -> None:
        with self._lock:
            job.state = "running"
        try:
            report = self._ingest(
                self.settings, job.kb, paths, progress=_JobProgress(job, self._lock)
            )
        except Exception as e:
            known = api_error_for(e)
            if known is None:
                log.error("upload job %s failed", job.id, exc_info=e)
            with self._lock:
                job.state = "failed"
                job.error = known.message if known else f"ingest failed: {type(e).__name__}: {e}"
            return
        with self._lock:
            job.state, job.result = "done", report.to_json()

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.state in ("done", "failed")]
        for job_id in finished[: max(0, len(self._jobs) - MAX_KEPT_JOBS)]:
            del self._jobs[job_id]
