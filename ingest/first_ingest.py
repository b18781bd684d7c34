"""A first ingest that does not get any document in leaves no knowledge base behind.

`kbqa ingest` creates its KB on first use, before reading any file. If that run is
interrupted (Ctrl-C, SIGINT, an exception) or every file fails, the KB would stay as an empty
shell that lists like a real one. The KB is deleted again in that case; a KB that existed
before the run is never touched, whatever happens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from kbqa.settings import Settings
from storage.errors import KBNotFound, StorageError
from storage.kb import KnowledgeBase

log = logging.getLogger("kbqa.ingest")


@contextmanager
def discard_if_left_empty(settings: Settings, name: str) -> Iterator[None]:
    """Around a run that may create KB `name`: delete it again if this run created it and
    it holds no document when the run ends (normally or not)."""
    existed = _exists(settings, name)
    try:
        yield
    finally:
        if not existed and _is_empty(settings, name):
            # KBBusy (another ingest now holds it), or a KB already gone: leave it be.
            with suppress(StorageError):
                KnowledgeBase.delete(
                    settings.kbs_dir, name, milvus_uri=settings.storage.milvus_uri or None
                )
                log.info("kbqa: removed knowledge base %s: its first ingest stored nothing", name)


def _exists(settings: Settings, name: str) -> bool:
    try:
        _open(settings, name).close()
    except KBNotFound:
        return False
    except StorageError:
        return True  # damaged or invalid: not this run's to delete
    return True


def _is_empty(settings: Settings, name: str) -> bool:
    try:
        with _open(settings, name) as kb:
            return kb.info().documents == 0
    except StorageError:
        return False


def _open(settings: Settings, name: str) -> KnowledgeBase:
    return KnowledgeBase.open(
        settings.kbs_dir, name, milvus_uri=settings.storage.milvus_uri or None
    )
