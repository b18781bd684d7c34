"""One writer per KB across hosts: a PostgreSQL session-level advisory lock.

The lock lives as long as the connection that took it: a writer whose process is killed (or
whose host vanishes) loses its connection, and the server releases the lock with it. The
connection is kept out of the pool while the lock is held.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kbqa.storage import pg_pool
from kbqa.storage.lock import POLL_SECONDS

if TYPE_CHECKING:
    import psycopg

LOCK_CLASS = 0x6B627161  # "kbqa": the first key of every kbqa advisory lock (int4)


class AdvisoryLock:
    """A kbqa.storage.lock.ProcessLock on key (LOCK_CLASS, `key`) of the database at `url`."""

    def __init__(self, url: str, key: int) -> None:
        self._url = url
        self._key = key
        self._conn: psycopg.Connection[Any] | None = None

    def acquire(self, deadline: float | None) -> bool:
        pool = pg_pool.pool(self._url)
        with pg_pool.errors(self._url):
            conn = pool.getconn()
            try:
                while not self._try(conn):
                    if deadline is not None and time.monotonic() >= deadline:
                        pool.putconn(conn)
                        return False
                    time.sleep(POLL_SECONDS)
            except BaseException:
                pool.putconn(conn)
                raise
        self._conn = conn
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, self._key))
        except Exception:
            pass
        finally:
            pg_pool.pool(self._url).putconn(conn)

    def _try(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, self._key)
        ).fetchone()
        return bool(row and row[0])
