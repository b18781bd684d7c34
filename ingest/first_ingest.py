"""A first ingest that does not get any document in leaves no knowledge base behind.

`kbqa ingest` creates its KB on first use, before reading any file. If that run is
interrupted (Ctrl-C, SIGINT, an exception) or every file fails, the KB would stay as an empty
shell that lists like a real one. The KB is deleted again in that case; a KB that existed
before the run is never touched, whatever happens.

A run killed outright (SIGKILL, power loss) cannot clean up after itself. While a first ingest
runs it holds an flock on a marker file, `<kbs_dir>/.first-ingest-<name>`; the kernel drops the
lock when the process dies, so a marker whose lock can be taken belongs to a dead run, and its
KB, if still empty, is deleted by the next ingest or KB listing (`sweep_abandoned`).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from kbqa.storage.config import StorageConfig, delete_kb, open_kb
from kbqa.storage.errors import KBNotFound, StorageError
from kbqa.storage.names import validate_kb_name

log = logging.getLogger("kbqa.ingest")

MARKER_PREFIX = ".first-ingest-"


@contextmanager
def discard_if_left_empty(settings: StorageConfig, name: str) -> Iterator[None]:
    """Around a run that may create KB `name`: delete it again if this run created it and
    it holds no document when the run ends (normally or not)."""
    sweep_abandoned(settings)
    existed = _exists(settings, name)
    marker = None if existed else _hold_marker(settings.kbs_dir, validate_kb_name(name))
    try:
        yield
    finally:
        try:
            if not existed:
                _delete_if_empty(settings, name)
        finally:
            if marker is not None:
                _release_marker(*marker)


def sweep_abandoned(settings: StorageConfig) -> None:
    """Delete the KBs that first ingests killed before they stored anything left behind."""
    if not settings.kbs_dir.is_dir():
        return
    for path in settings.kbs_dir.glob(f"{MARKER_PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its run is alive
            continue
        _delete_if_empty(settings, path.name.removeprefix(MARKER_PREFIX))
        _release_marker(path, fd)


def _hold_marker(kbs_dir: Path, name: str) -> tuple[Path, int] | None:
    kbs_dir.mkdir(parents=True, exist_ok=True)
    path = kbs_dir / f"{MARKER_PREFIX}{name}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # another first ingest of the same name runs and holds it
        return None
    return path, fd


def _release_marker(path: Path, fd: int) -> None:
    with suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)  # drops the flock


def _delete_if_empty(settings: StorageConfig, name: str) -> None:
    if not _is_empty(settings, name):
        return
    # KBBusy (another ingest now holds it), or a KB already gone: leave it be.
    with suppress(StorageError):
        delete_kb(settings, name)
        log.info("kbqa: removed knowledge base %s: its first ingest stored nothing", name)


def _exists(settings: StorageConfig, name: str) -> bool:
    try:
        open_kb(settings, name).close()
    except KBNotFound:
        return False
    except StorageError:
        return True  # damaged or invalid: not this run's to delete
    return True


def _is_empty(settings: StorageConfig, name: str) -> bool:
    try:
        with open_kb(settings, name) as kb:
            return kb.info().documents == 0
    except StorageError:
        return False
