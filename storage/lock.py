"""The per-KB write lock: flock on `<kb>/.lock`, or a PostgreSQL advisory lock.

Either is released when the holding process dies (the kernel drops the flock, the server
drops the advisory lock with the connection), so a killed ingest never leaves a stale lock.
The lock is re-entrant within one `WriteLock` object (the pipeline holds it around a whole
run and `sync` takes it again inside), and threads of the same process are serialised by a
mutex first, since neither flock nor a session lock can tell threads apart.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from kbqa.storage.errors import KBBusy

POLL_SECONDS = 0.05


class ProcessLock(Protocol):
    """The part of a write lock that other processes see; not re-entrant, not thread-safe."""

    def acquire(self, deadline: float | None) -> bool:
        """Take it, waiting until `deadline` (time.monotonic(); None = forever); False = busy."""
        ...

    def release(self) -> None: ...


class FileLock:
    """flock on a file (a KB directory's `.lock`)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self, deadline: float | None) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            os.close(fd)
                            return False
                        time.sleep(POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class WriteLock:
    def __init__(self, target: Path | ProcessLock, what: str) -> None:
        """`target`: the lock file's path (flock), or another ProcessLock."""
        self._outer = FileLock(target) if isinstance(target, Path) else target
        self._what = what
        self._mutex = threading.RLock()
        self._depth = 0

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock; wait at most `timeout` seconds (None = forever), else raise KBBusy."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._mutex.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise self._busy()
        try:
            if self._depth == 0:
                self._acquire_file(deadline)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release_file()
        finally:
            self._mutex.release()

    def try_hold(self) -> bool:
        """Acquire without waiting (for opportunistic work); pair with `release`."""
        if not self._mutex.acquire(blocking=False):
            return False
        if self._depth == 0:
            try:
                self._acquire_file(deadline=time.monotonic())
            except KBBusy:
                self._mutex.release()
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._release_file()
        self._mutex.release()

    def _acquire_file(self, deadline: float | None) -> None:
        if not self._outer.acquire(deadline):
            raise self._busy()

    def _release_file(self) -> None:
        self._outer.release()

    def _busy(self) -> KBBusy:
        return KBBusy(f"{self._what} is being written by another process; try again later")
