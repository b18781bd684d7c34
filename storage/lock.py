"""The per-KB write lock: flock on `<kb>/.lock`.

flock is released by the kernel when the holding process dies, so a killed ingest never
leaves a stale lock. The lock is re-entrant within one `WriteLock` object (the pipeline
holds it around a whole run and `sync` takes it again inside), and threads of the same
process are serialised by a mutex first, since flock itself cannot tell threads apart.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.errors import KBBusy

_POLL_SECONDS = 0.05


class WriteLock:
    def __init__(self, path: Path, what: str) -> None:
        self._path = path
        self._what = what
        self._mutex = threading.RLock()
        self._fd: int | None = None
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
                            raise self._busy() from None
                        time.sleep(_POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _release_file(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _busy(self) -> KBBusy:
        return KBBusy(f"{self._what} is being written by another process; try again later")
