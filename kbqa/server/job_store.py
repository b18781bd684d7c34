"""Upload jobs on disk: `$KBQA_HOME/jobs.db`, one SQLite database (WAL), one row per job.

The database is what a restarted server, or another `kbqa serve` on the same home, knows of a
job. Rows hold the JSON the HTTP API returns (progress, the ingest report) plus what the server
needs to clean up after a job: where it saved the uploaded files and which process ran it.

Which process owns a job: every server holds an exclusive flock on
`$KBQA_HOME/jobs.owners/<owner>.lock` for as long as it runs. The kernel drops the lock when the
process dies, however it dies, so a queued or running row whose owner's lock can be taken is
known to be abandoned, while the jobs of a live server beside us are left alone.

A database that cannot be opened, is not SQLite, fails its quick check or has another schema is
moved aside (`jobs.db.corrupt-<time>`) with a warning and a new one is started: job history is
worth less than a server that starts. If even that fails, jobs are kept in memory only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("kbqa.server")

JobState = Literal["queued", "running", "done", "failed"]
JobKind = Literal["upload", "watch"]
ACTIVE_STATES = ("queued", "running")

SCHEMA_VERSION = 2
"""2 added `kind`; a version-1 database gains the column (its rows are uploads)."""
COLUMNS = (
    "id, kb, owner, state, files, paths, progress, result, error, error_code, "
    "created, started, finished, kind"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id         TEXT PRIMARY KEY,
    kb         TEXT NOT NULL,
    owner      TEXT NOT NULL,  -- the server process that accepted the upload
    state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    files      TEXT NOT NULL,  -- JSON ["name", ...]: the names the client sees
    paths      TEXT NOT NULL,  -- JSON ["/abs/path", ...]: where the server saved them
    progress   TEXT NOT NULL,  -- JSON {"files_total", "files_done", "chunks", "pages_done"}
    result     TEXT,           -- JSON of `kbqa ingest --json`, once done
    error      TEXT,
    error_code TEXT,
    created    REAL NOT NULL,  -- Unix time
    started    REAL,
    finished   REAL,
    kind       TEXT NOT NULL DEFAULT 'upload'  -- 'upload', or 'watch': a watched folder's sync
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, finished);
"""


@dataclass
class Job:
    id: str
    kb: str
    files: list[str]
    paths: list[str] = field(default_factory=list)
    owner: str = ""
    state: JobState = "queued"
    files_total: int = 0
    files_done: int = 0
    chunks: int = 0
    pages_done: int = 0
    current: str | None = None
    """The page being read ("scan.pdf page 3/20") while a paged file is OCR'd; not stored."""
    result: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    kind: JobKind = "upload"

    def progress(self) -> dict[str, int]:
        return {
            "files_total": self.files_total,
            "files_done": self.files_done,
            "chunks": self.chunks,
            "pages_done": self.pages_done,
        }


class JobStore:
    """The jobs table behind one connection; safe to call from any thread.

    A failing read or write is logged and survived (a job still runs and is still served from
    memory while its process lives): the store records jobs, it must never break them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = _open_or_replace(path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def save(self, job: Job) -> None:
        """Insert or update the whole row."""
        row = job_row(job)
        with self._guard("save job"):
            self._conn.execute(
                f"INSERT OR REPLACE INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * len(row))})",
                row,
            )

    def get(self, job_id: str) -> Job | None:
        with self._guard("read job"):
            found = self._conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return job_from_row(found) if found else None
        return None

    def active_owners(self) -> set[str]:
        """Owners of queued or running jobs."""
        with self._guard("read job owners"):
            rows = self._conn.execute(
                "SELECT DISTINCT owner FROM jobs WHERE state IN (?, ?)", ACTIVE_STATES
            ).fetchall()
            return {owner for (owner,) in rows}
        return set()

    def fail_active(self, owner: str, code: str, messages: dict[tuple[str, str], str]) -> int:
        """Mark `owner`'s queued and running jobs failed, with messages[(kind, state)]; how
        many."""
        changed = 0
        with self._guard("fail abandoned jobs"):
            for (kind, state), message in messages.items():
                cursor = self._conn.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, error_code = ?, finished = ? "
                    "WHERE owner = ? AND state = ? AND kind = ?",
                    (message, code, time.time(), owner, state, kind),
                )
                changed += cursor.rowcount
        return changed

    def newest(self, *, kind: str | None, kbs: list[str] | None, limit: int) -> list[Job]:
        """The `limit` most recently created jobs, of `kind` and of the KBs `kbs` (None: any)."""
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if kbs is not None:
            where.append(f"kb IN ({', '.join('?' * len(kbs))})" if kbs else "0")
            args.extend(kbs)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._guard("list jobs"):
            rows = self._conn.execute(
                f"SELECT {COLUMNS} FROM jobs {clause}ORDER BY created DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [job_from_row(row) for row in rows]
        return []

    def prune(self, older_than: float, keep: int) -> list[Job]:
        """Delete finished jobs that finished before `older_than` or beyond the newest `keep`
        finished ones; return them. Queued and running jobs are never pruned."""
        finished = "state IN ('done', 'failed')"
        with self._guard("prune jobs"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = self._conn.execute(
                    f"SELECT {COLUMNS} FROM jobs WHERE {finished} AND (finished < ? OR id IN "
                    f"(SELECT id FROM jobs WHERE {finished} "
                    "ORDER BY finished DESC, created DESC LIMIT -1 OFFSET ?))",
                    (older_than, keep),
                ).fetchall()
                self._conn.executemany("DELETE FROM jobs WHERE id = ?", [(r[0],) for r in rows])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return [job_from_row(row) for row in rows]
        return []

    def paths_in_use(self) -> set[str]:
        """Upload paths that some job still in the table names."""
        with self._guard("read job paths"):
            rows = self._conn.execute("SELECT paths FROM jobs").fetchall()
            return {path for (paths,) in rows for path in json.loads(paths)}
        return set()

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except (sqlite3.Error, ValueError) as e:
                log.error("kbqa: cannot %s in %s: %s", what, self.path, e)


def job_row(job: Job) -> tuple[Any, ...]:
    """`job` as a row of COLUMNS (the SQLite and the PostgreSQL job stores write the same)."""
    return (
        job.id,
        job.kb,
        job.owner,
        job.state,
        json.dumps(job.files, ensure_ascii=False),
        json.dumps(job.paths, ensure_ascii=False),
        json.dumps(job.progress()),
        json.dumps(job.result, ensure_ascii=False) if job.result is not None else None,
        job.error,
        job.error_code,
        job.created,
        job.started,
        job.finished,
        job.kind,
    )


def job_from_row(row: tuple[Any, ...]) -> Job:
    (id_, kb, owner, state, files, paths, progress, result, error, code, created, started, end) = (
        row[:13]
    )
    counts = json.loads(progress)
    return Job(
        id=id_,
        kb=kb,
        files=json.loads(files),
        paths=json.loads(paths),
        owner=owner,
        state=state,
        files_total=counts["files_total"],
        files_done=counts["files_done"],
        chunks=counts["chunks"],
        pages_done=counts.get("pages_done", 0),  # rows written before pages were counted
        result=json.loads(result) if result is not None else None,
        error=error,
        error_code=code,
        created=created,
        started=started,
        finished=end,
        kind=row[13],
    )


def _open_or_replace(path: Path) -> sqlite3.Connection:
    try:
        return _open(path)
    except (sqlite3.Error, OSError, ValueError) as e:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning(
            "kbqa: the job database %s is unusable (%s); moved it to %s and starting with "
            "no job history",
            path,
            e,
            aside.name,
        )
        try:
            for suffix in ("", "-wal", "-shm"):
                source = path.with_name(path.name + suffix)
                if source.exists() or source.is_symlink():
                    source.rename(aside.with_name(aside.name + suffix))
            return _open(path)
        except (sqlite3.Error, OSError, ValueError) as again:
            log.error(
                "kbqa: cannot start a job database at %s (%s); jobs are kept in memory only "
                "and will be forgotten when the server stops",
                path,
                again,
            )
            return _open(Path(":memory:"))


def _open(path: Path) -> sqlite3.Connection:
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit: each statement is its own transaction unless BEGIN says otherwise.
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; fine for job rows
        (check,) = conn.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version not in (0, 1, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
        if version == 1:
            conn.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'upload'")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        if columns != [c.strip() for c in COLUMNS.split(",")]:
            raise sqlite3.DatabaseError(f"unexpected columns in table jobs: {columns}")
    except BaseException:
        conn.close()
        raise
    return conn


class OwnerLock:
    """This process's claim on its jobs: an flock held on `<folder>/<owner>.lock` while it runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.owner = uuid.uuid4().hex
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock. Created under a temporary name and renamed into place locked, so
        no other process ever sees the file unlocked while this one lives."""
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".{self.owner}.tmp"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(staging, self.folder / f"{self.owner}.lock")
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            (self.folder / f"{self.owner}.lock").unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def if_dead(self, owner: str) -> Iterator[bool]:
        """True (holding its lock meanwhile) if `owner` is not a live process; its lock file is
        removed afterwards."""
        if owner == self.owner:
            yield False
            return
        path = self.folder / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def others(self) -> set[str]:
        """Owners whose lock files are in the folder, other than this process."""
        if not self.folder.is_dir():
            return set()
        return {p.stem for p in self.folder.glob("*.lock")} - {self.owner}
