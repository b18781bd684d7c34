"""Connections to a PostgreSQL database: one psycopg pool per URL per process.

psycopg is an optional dependency (the `postgres` extra), imported only when a database URL
is configured. Every KB of the process borrows from the same pool for a transaction at a time,
and the write lock of a KB keeps one connection for as long as it is held (see
kbqa.storage.pg_lock). Broken connections (the server restarted) are checked and replaced when
borrowed, so work resumes once the server is back.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kbqa.storage.errors import DatabaseUnavailable, StorageError

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

POOL_SIZE = 8
CONNECT_TIMEOUT_S = 5
WAIT_TIMEOUT_S = 5.0
"""How long a borrower waits for a connection (the server may be down) before a clear error."""

_pools: dict[str, ConnectionPool[Any]] = {}
_pools_lock = threading.Lock()


def is_database_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def pool(url: str) -> ConnectionPool[Any]:
    """The process's pool for `url` (opened on first use)."""
    with _pools_lock:
        found = _pools.get(url)
        if found is None:
            found = _pools[url] = _open_pool(url)
        return found


def _open_pool(url: str) -> ConnectionPool[Any]:
    try:
        from psycopg_pool import ConnectionPool
    except ImportError as exc:
        raise StorageError(
            "storage.database names PostgreSQL but psycopg is not installed; "
            "install kbqa with the `postgres` extra (pip install 'kbqa[postgres]')"
        ) from exc

    def configure(conn: psycopg.Connection[Any]) -> None:
        # Transactions are explicit (BEGIN … COMMIT in kbqa.storage.pg_store), as with SQLite.
        conn.autocommit = True

    return ConnectionPool(
        url,
        min_size=1,
        max_size=POOL_SIZE,
        kwargs={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "kbqa",
            # Short queries: JIT compiling one (~100+ ms) costs more than it could save.
            "options": "-c jit=off",
        },
        configure=configure,
        check=ConnectionPool.check_connection,
        timeout=WAIT_TIMEOUT_S,
        open=True,
        name=redact(url),
    )


@contextmanager
def connection(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection borrowed for the block; database errors become one clear StorageError."""
    with errors(url), pool(url).connection() as conn:
        yield conn


@contextmanager
def errors(url: str) -> Iterator[None]:
    """An unreachable server or a failed statement as StorageError, naming the database."""
    import psycopg
    from psycopg_pool import PoolTimeout

    try:
        yield
    except PoolTimeout as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {redact(url)} cannot be reached (no connection within "
            f"{WAIT_TIMEOUT_S:.0f} s); is the server running?"
        ) from exc
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"PostgreSQL at {redact(url)} failed: {first}") from exc


def close(url: str) -> None:
    """Close the pool of `url`, if open (tests; a process that exits need not call it)."""
    with _pools_lock:
        found = _pools.pop(url, None)
    if found is not None:
        found.close()
