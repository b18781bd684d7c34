"""Upload jobs in the shared PostgreSQL database (`storage.database`), so any server answers
`GET /v1/jobs/{id}`: the same rows and methods as job_store.JobStore, in table `kbqa_jobs`.

Which server owns a job: every server holds a session-level advisory lock on its owner id for
as long as it runs, on a connection of its own; the database drops it when that connection
dies, however the server dies. A queued or running row whose owner's lock can be taken was
abandoned; the jobs of live servers, on this host or any other, are left alone. A job's saved
upload files stay on the host that accepted it, which also runs its ingest.

Like JobStore, a failing read or write is logged and survived: the store records jobs, it must
never break them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from kbqa.server.job_store import ACTIVE_STATES, COLUMNS, Job, job_from_row, job_row
from kbqa.storage import pg_pool
from kbqa.storage.errors import StorageError

log = logging.getLogger("kbqa.server")

JOBS_LOCK_CLASS = 0x6B716A62  # "kqjb": the first key of job owners' advisory locks (int4)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kbqa_jobs (
    id         text PRIMARY KEY,
    kb         text NOT NULL,
    owner      text NOT NULL,
    state      text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    files      text NOT NULL,
    paths      text NOT NULL,
    progress   text NOT NULL,
    result     text,
    error      text,
    error_code text,
    created    double precision NOT NULL,
    started    double precision,
    finished   double precision,
    kind       text NOT NULL DEFAULT 'upload'
);
CREATE INDEX IF NOT EXISTS kbqa_jobs_by_state ON kbqa_jobs (state, finished)
"""


def _owner_key(owner: str) -> int:
    """The advisory lock key (int4) of an owner id (32 hex digits)."""
    return int(owner[:8], 16) - 2**31


class PgJobStore:
    def __init__(self, url: str) -> None:
        self.path = pg_pool.redact(url)  # for messages, as JobStore's path
        self._url = url
        self._lock = threading.Lock()
        with (
            self._guard("create the jobs table"),
            pg_pool.connection(url) as conn,
            conn.transaction(),
        ):
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (JOBS_LOCK_CLASS,))
            for statement in _SCHEMA.split(";"):
                conn.execute(statement)

    def close(self) -> None:
        """Nothing to close: connections belong to the process's pool."""

    def save(self, job: Job) -> None:
        row = job_row(job)
        updates = ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in COLUMNS.split(","))
        self._run(
            "save job",
            f"INSERT INTO kbqa_jobs ({COLUMNS}) VALUES ({', '.join(['%s'] * len(row))}) "
            f"ON CONFLICT (id) DO UPDATE SET {updates}",
            row,
        )

    def get(self, job_id: str) -> Job | None:
        found = self._run("read job", f"SELECT {COLUMNS} FROM kbqa_jobs WHERE id = %s", (job_id,))
        return job_from_row(found[0]) if found else None

    def active_owners(self) -> set[str]:
        found = self._run(
            "read job owners",
            "SELECT DISTINCT owner FROM kbqa_jobs WHERE state = ANY(%s)",
            (list(ACTIVE_STATES),),
        )
        return {owner for (owner,) in found}

    def fail_active(self, owner: str, code: str, messages: dict[tuple[str, str], str]) -> int:
        changed = 0
        for (kind, state), message in messages.items():
            found = self._run(
                "fail abandoned jobs",
                "UPDATE kbqa_jobs SET state = 'failed', error = %s, error_code = %s, "
                "finished = %s WHERE owner = %s AND state = %s AND kind = %s RETURNING id",
                (message, code, time.time(), owner, state, kind),
            )
            changed += len(found)
        return changed

    def newest(self, *, kind: str | None, kbs: list[str] | None, limit: int) -> list[Job]:
        where: list[str] = ["true"]
        args: list[Any] = []
        if kind is not None:
            where.append("kind = %s")
            args.append(kind)
        if kbs is not None:
            where.append("kb = ANY(%s)")
            args.append(kbs)
        found = self._run(
            "list jobs",
            f"SELECT {COLUMNS} FROM kbqa_jobs WHERE {' AND '.join(where)} "
            "ORDER BY created DESC LIMIT %s",
            (*args, limit),
        )
        return [job_from_row(row) for row in found]

    def prune(self, older_than: float, keep: int) -> list[Job]:
        finished = "state IN ('done', 'failed')"
        found = self._run(
            "prune jobs",
            f"DELETE FROM kbqa_jobs WHERE {finished} AND (finished < %s OR id IN "
            f"(SELECT id FROM kbqa_jobs WHERE {finished} "
            f"ORDER BY finished DESC, created DESC OFFSET %s)) RETURNING {COLUMNS}",
            (older_than, keep),
        )
        return [job_from_row(row) for row in found]

    def paths_in_use(self) -> set[str]:
        found = self._run("read job paths", "SELECT paths FROM kbqa_jobs")
        return {path for (paths,) in found for path in json.loads(paths)}

    def _run(self, what: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self._guard(what), pg_pool.connection(self._url) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        return []

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        import psycopg

        with self._lock:
            try:
                yield
            except (StorageError, psycopg.Error) as e:
                log.error("kbqa: cannot %s in %s: %s", what, self.path, e)


class PgOwnerLock:
    """This process's claim on its jobs: an advisory lock on its owner id while it runs."""

    def __init__(self, url: str) -> None:
        self.folder = pg_pool.redact(url)  # for messages, as OwnerLock's folder
        self.owner = uuid.uuid4().hex
        self._url = url
        self._conn: Any = None

    def acquire(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(self._url, autocommit=True, application_name="kbqa-jobs")
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (JOBS_LOCK_CLASS, self._key))
        except psycopg.Error as e:
            raise OSError(f"cannot reach PostgreSQL at {self.folder}: {e}") from e
        self._conn = conn

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the server drops the lock with the session

    @contextlib.contextmanager
    def if_dead(self, owner: str) -> Iterator[bool]:
        """True (holding its lock meanwhile) if `owner` is not a live server."""
        if owner == self.owner:
            yield False
            return
        import psycopg

        key = (JOBS_LOCK_CLASS, _owner_key(owner))
        held = contextlib.ExitStack()
        try:
            conn = held.enter_context(pg_pool.connection(self._url))
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
        except (StorageError, psycopg.Error) as e:
            held.close()
            log.error("kbqa: cannot check job owner %s in %s: %s", owner, self.folder, e)
            yield False  # unknown: leave its jobs alone
            return
        with held:
            if not (row and row[0]):
                yield False
                return
            try:
                yield True
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)

    def others(self) -> set[str]:
        """Owners are found through their jobs' rows (JobStore.active_owners)."""
        return set()

    @property
    def _key(self) -> int:
        return _owner_key(self.owner)
