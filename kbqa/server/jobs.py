"""Upload jobs: uploaded files are saved under `$KBQA_HOME/uploads/<kb>/` and ingested in the
background by the same incremental pipeline as `kbqa ingest`.

File names come from the client and are hostile until cleaned: only the last path component
is kept, control and format characters are dropped, a leading dot is removed, and the result
must carry a supported extension. Files are staged under a hidden name and renamed into place
only when every file of the request was received whole, so a refused request changes nothing.

Each job ingests just the paths it uploaded. A file argument's root is its parent folder, so
the pipeline never removes the KB's other uploaded documents.

Jobs are recorded in `$KBQA_HOME/jobs.db` (see job_store), or with `storage.database` in that
PostgreSQL database (see pg_jobs), at every state change, and their progress at most once a
second, so `GET /v1/jobs/{id}` answers after a restart too, from any server sharing the home
(or the database).

Jobs for one KB run one after another; jobs for different KBs run side by side, so a stuck or
slow job never delays another KB's upload. Files are parsed by the server's warm worker
processes (kbqa.ingest.isolation): a parse past `ingest.parse_timeout_s` or `ingest.parse_memory_mb`
is killed and its file fails alone; an upload job still running `server.job_timeout_s` after
it started is stopped and fails with `job_timeout`, storing nothing.

A restart never re-runs a job. When the server stops cleanly, the running ingests are stopped
(a parse in progress is killed) and they and the queued jobs fail; when it dies, its jobs stay
queued or running in the database until the next server on this home starts (or is asked about
one of them), finds the dead server's owner lock free, and marks them failed. Either way the
error code is `interrupted` and the message says to upload the files again. Re-running queued
jobs automatically was rejected: their files may have been replaced by a later upload of the
same name, and a job that killed the server would kill it again. The KB itself is never at
risk: an ingest commits whole or not at all.

Finished jobs are kept for `server.job_history_days` and at most `server.job_history_max` of
them; older ones are deleted after each job and at start-up, with the uploaded files that only
they used (a file that is a KB document, is named by a kept job, or was saved again since, stays).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from kbqa.ingest.isolation import DEADLINE, FileParser, ParseStopped, Stop, WorkerPool
from kbqa.ingest.loaders import SUPPORTED_EXTENSIONS
from kbqa.ingest.pipeline import IngestReport, ingest_paths
from kbqa.kb_admin import list_documents
from kbqa.server.errors import ApiError, ShuttingDown, api_error_for
from kbqa.server.job_store import ACTIVE_STATES, Job, JobKind, JobStore, OwnerLock
from kbqa.server.pg_jobs import PgJobStore, PgOwnerLock
from kbqa.settings import Settings
from kbqa.storage.errors import InvalidKBName, KBNotFound
from kbqa.storage.names import validate_kb_name

log = logging.getLogger("kbqa.server")

MAX_NAME_BYTES = 200
"""Room under the usual 255-byte file name limit for the staging prefix and suffix."""

JOBS_DB = "jobs.db"
PROGRESS_SAVE_S = 1.0
"""A running job's progress is written to its row at most this often (states at once)."""
MTIME_SLACK_S = 1.0
"""File systems with coarse timestamps may date a file saved just before its job a bit later."""

INTERRUPTED = "interrupted"
JOB_TIMEOUT = "job_timeout"
INTERRUPTED_MESSAGES = {
    "queued": "the server stopped before this job ran; nothing was ingested, "
    "upload the files again",
    "running": "the server stopped before this ingest finished; the knowledge base is intact "
    "(an ingest commits whole or not at all), upload the files again",
}
WATCH_INTERRUPTED_MESSAGES = {
    "queued": "the server stopped before this sync ran; the folder is synced again when the "
    "server starts",
    "running": "the server stopped before this sync finished; the knowledge base is intact "
    "(a sync commits whole or not at all), and the folder is synced again when the server "
    "starts",
}
_INTERRUPTED_BY_KIND = {
    ("upload", state): message for state, message in INTERRUPTED_MESSAGES.items()
} | {("watch", state): message for state, message in WATCH_INTERRUPTED_MESSAGES.items()}

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


class _JobProgress:
    """The pipeline's Progress protocol, written into a job (and, now and then, its row)."""

    def __init__(self, manager: JobManager, job: Job) -> None:
        self._manager = manager
        self._job = job
        self._saved = time.monotonic()

    def start(self, files: int) -> None:
        with self._manager.lock:
            self._job.files_total = files
        self._save()

    def file_done(self, path: str, status: str, chunks: int) -> None:
        with self._manager.lock:
            self._job.files_done += 1
            self._job.chunks += chunks
            self._job.current = None
        if time.monotonic() - self._saved >= PROGRESS_SAVE_S:
            self._save()

    def page_done(self, path: str, page: int, pages: int) -> None:
        """OCR takes seconds a page: a scanned PDF's job shows which page it is on."""
        with self._manager.lock:
            self._job.pages_done += 1
            self._job.current = f"{path} page {page}/{pages}" if page < pages else None
        if time.monotonic() - self._saved >= PROGRESS_SAVE_S:
            self._save()

    def _save(self) -> None:
        self._saved = time.monotonic()
        self._manager.persist(self._job)


Ingest = Callable[..., IngestReport]


class JobManager:
    """Runs upload ingests in background threads, one lane per KB, and records them in jobs.db.

    This process's queued and running jobs are also kept in memory, where their progress is
    current; everything else is read from the database. Call `start` before use.
    """

    def __init__(self, settings: Settings, *, ingest: Ingest = ingest_paths) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        """Guards the fields of this process's active jobs."""
        self._ingest = ingest
        self._active: dict[str, Job] = {}
        self._store: JobStore | PgJobStore | None = None
        # With storage.database, jobs live in that database: any server answers for them.
        database = settings.storage.database
        self._owner: OwnerLock | PgOwnerLock = (
            PgOwnerLock(database) if database else OwnerLock(settings.home / "jobs.owners")
        )
        # One thread per KB: a KB's ingests are serialised by its storage lock anyway, and a
        # job queued behind another KB's long one must not wait for it.
        self._lanes: dict[str, ThreadPoolExecutor] = {}
        self._stops: dict[str, Stop] = {}
        """The running jobs' Stops, by job id: set at shutdown."""
        self._pool: WorkerPool | None = None
        self._closing = False

    @property
    def owner(self) -> str:
        return self._owner.owner

    def start(self) -> None:
        """Open jobs.db, fail the jobs that dead servers left queued or running, prune."""
        try:
            self._owner.acquire()
        except OSError as e:  # the home is not writable: uploads will fail with it
            log.error("kbqa: cannot create the job owner lock in %s: %s", self._owner.folder, e)
        database = self.settings.storage.database
        self._store = PgJobStore(database) if database else JobStore(self.settings.home / JOBS_DB)
        ingest = self.settings.ingest
        self._pool = WorkerPool(ingest.parse_memory_mb, ingest.loader_plugins)
        self.recover()
        self.prune()

    def submit(self, kb: str, paths: list[Path]) -> Job:
        job = Job(
            id=uuid.uuid4().hex,
            kb=kb,
            files=[p.name for p in paths],
            paths=[str(p) for p in paths],
            owner=self.owner,
        )
        if self._enqueue(job, paths) is None:
            raise ShuttingDown()
        return dataclasses.replace(job)

    def submit_watch(self, kb: str, folder: Path) -> tuple[Job, Future[None]] | None:
        """A sync of a watched folder, as a job of kind "watch" queued with its KB's uploads (one
        ingest at a time); its future ends with the job. None once the server is stopping."""
        job = Job(
            id=f"watch-{uuid.uuid4().hex}",
            kb=kb,
            files=[str(folder)],
            owner=self.owner,
            kind="watch",
        )
        future = self._enqueue(job, [folder])
        return None if future is None else (dataclasses.replace(job), future)

    def recent(self, *, kind: JobKind | None, kbs: list[str] | None, limit: int) -> list[Job]:
        """The newest jobs first (this process's active ones with their current progress)."""
        found = self._db.newest(kind=kind, kbs=kbs, limit=limit)
        with self.lock:
            return [dataclasses.replace(self._active.get(job.id, job)) for job in found]

    def _enqueue(self, job: Job, paths: list[Path]) -> Future[None] | None:
        # Under the lock, so that shutdown() never misses a job submitted as it starts.
        with self.lock:
            if self._closing:
                return None
            self._db.save(job)
            self._active[job.id] = job
            lane = self._lanes.get(job.kb)
            if lane is None:
                lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbqa-ingest")
                self._lanes[job.kb] = lane
            return lane.submit(self._run, job, paths)

    def get(self, job_id: str) -> Job | None:
        """A snapshot of the job, or None if unknown (or pruned from the history)."""
        with self.lock:
            job = self._active.get(job_id)
            if job is not None:
                return dataclasses.replace(job)
        found = self._db.get(job_id)
        # Another server's job: if that server died since, say so now rather than "running".
        if found is not None and found.state in ACTIVE_STATES and self._fail_if_dead(found.owner):
            found = self._db.get(job_id)
        return found

    def recover(self) -> int:
        """Fail the queued and running jobs of servers that are gone; how many."""
        return sum(self._fail_if_dead(owner) for owner in self._recover_candidates())

    def prune(self) -> list[Job]:
        """Forget finished jobs past the history limits, and delete their leftover uploads."""
        server = self.settings.server
        pruned = self._db.prune(
            older_than=time.time() - server.job_history_days * 86400,
            keep=server.job_history_max,
        )
        if pruned:
            self._remove_leftovers(pruned)
        return pruned

    def persist(self, job: Job) -> None:
        """Write the job's current fields to its row."""
        with self.lock:
            snapshot = dataclasses.replace(job)
        self._db.save(snapshot)

    def shutdown(self) -> None:
        """Stop the running ingests (nothing of them is stored); fail them and the queued ones.

        A parse in progress is killed at once; an ingest busy embedding stops before its next
        file."""
        with self.lock:
            self._closing = True
            for stop in self._stops.values():
                stop.set(INTERRUPTED)
            lanes = list(self._lanes.values())
        if self._pool is not None:
            self._pool.close()
        for lane in lanes:
            lane.shutdown(wait=False, cancel_futures=True)
        for lane in lanes:
            lane.shutdown(wait=True)
        with self.lock:
            dropped = list(self._active.values())
            self._active.clear()
        if self._store is None:
            return
        for job in dropped:  # all queued: the lanes have waited for the running ones
            job.state, job.error_code, job.finished = "failed", INTERRUPTED, time.time()
            job.error = _INTERRUPTED_BY_KIND[(job.kind, "queued")]
            self._db.save(job)
        self._store.close()
        self._owner.release()

    @property
    def _db(self) -> JobStore | PgJobStore:
        if self._store is None:
            raise RuntimeError("JobManager.start() was not called")
        return self._store

    def _run(self, job: Job, paths: list[Path]) -> None:
        # A watched folder's first sync may rightly take hours: only uploads have a deadline.
        stop = Stop(self.settings.server.job_timeout_s if job.kind == "upload" else None)
        with self.lock:
            job.state, job.started = "running", time.time()
            self._stops[job.id] = stop
            if self._closing:
                stop.set(INTERRUPTED)
        self.persist(job)
        try:
            if self._pool is None:
                raise RuntimeError("JobManager.start() was not called")
            parser = FileParser(self._pool, self.settings.ingest.parse_timeout_s, stop=stop)
            progress = _JobProgress(self, job)
            report = self._ingest(self.settings, job.kb, paths, progress=progress, parser=parser)
        except ParseStopped as e:
            with self.lock:
                job.state, job.finished = "failed", time.time()
                job.error_code, job.error = self._stopped(job, e.reason)
        except Exception as e:
            known = api_error_for(e)
            if known is None:
                log.error("%s job %s failed", job.kind, job.id, exc_info=e)
            with self.lock:
                job.state, job.finished = "failed", time.time()
                job.error = known.message if known else f"ingest failed: {type(e).__name__}: {e}"
                job.error_code = known.code if known else "ingest_failed"
        else:
            with self.lock:
                job.state, job.finished, job.result = "done", time.time(), report.to_json()
        # The row first: a reader that misses the job in memory must find it finished there.
        self.persist(job)
        with self.lock:
            del self._active[job.id]
            del self._stops[job.id]
        self.prune()

    def _stopped(self, job: Job, reason: str) -> tuple[str, str]:
        """The error code and message of a job whose ingest was stopped for `reason`."""
        if reason == DEADLINE:
            timeout = self.settings.server.job_timeout_s
            return JOB_TIMEOUT, (
                f"the job ran longer than {timeout:g} s (server.job_timeout_s) and was stopped; "
                "nothing of it was stored"
            )
        return INTERRUPTED, _INTERRUPTED_BY_KIND[(job.kind, "running")]

    def _recover_candidates(self) -> set[str]:
        return (self._db.active_owners() | self._owner.others()) - {self.owner}

    def _fail_if_dead(self, owner: str) -> int:
        with self._owner.if_dead(owner) as dead:
            if not dead:
                return 0
            failed = self._db.fail_active(owner, INTERRUPTED, _INTERRUPTED_BY_KIND)
        if failed:
            log.warning("kbqa: %d upload job(s) of a stopped server marked %s", failed, INTERRUPTED)
        return failed

    def _remove_leftovers(self, pruned: list[Job]) -> None:
        """Delete the saved uploads of pruned jobs that no KB document and no kept job uses.

        A file newer than its job was saved again by a later upload (maybe by another server
        that has not recorded its job yet), so it is left alone too."""
        in_use = self._db.paths_in_use()
        documents: dict[str, set[str] | None] = {}
        for job in pruned:
            try:
                folder = uploads_dir(self.settings, job.kb).resolve()
            except InvalidKBName:
                continue
            for raw in job.paths:
                path = Path(raw)
                if path.parent != folder or raw in in_use:
                    continue
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode) or info.st_mtime > job.created + MTIME_SLACK_S:
                    continue
                if job.kb not in documents:
                    documents[job.kb] = self._document_paths(job.kb)
                kept = documents[job.kb]
                if kept is not None and raw not in kept:
                    path.unlink(missing_ok=True)

    def _document_paths(self, kb: str) -> set[str] | None:
        """Paths of the KB's documents; empty if it is gone, None if it cannot be read."""
        try:
            return {d["path"] for d in list_documents(self.settings, kb)}
        except KBNotFound:
            return set()
        except Exception as e:
            log.warning("kbqa: keeping old uploads of %s: cannot list its documents: %s", kb, e)
            return None
