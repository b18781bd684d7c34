"""Keep a KB in sync with folders: after each burst of changes under them, sync again.

Each sync is a plain `ingest_paths` of the same paths, so a watched folder follows exactly the
rules of `kbqa ingest` (added, changed, vanished files). Folders are watched rather than files:
editors save by writing a temporary file and renaming it over the original, which replaces the
inode a file watch would hold.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, DefaultFilter, watch

from ingest.pipeline import IngestReport, IngestUsageError, ingest_paths
from kbqa.settings import Settings
from storage.errors import StorageError

log = logging.getLogger(__name__)

DEBOUNCE_MS = 300
"""Quiet time that ends a burst of changes: an editor's save or a copied folder is one sync."""


class WatchedFolderGone(Exception):
    """A watched folder was deleted or moved away; the KB keeps what it held."""


@dataclass(frozen=True)
class Sync:
    """One sync after a burst of changes: its report, or why it could not run."""

    changes: int
    report: IngestReport | None = None
    error: str | None = None


class _DocumentFilter(DefaultFilter):
    """What the sync would read: nothing hidden below a watched folder (swap files, .git)."""

    def __init__(self, roots: list[Path]) -> None:
        super().__init__()
        self._roots = roots

    def __call__(self, change: Change, path: str) -> bool:
        if not super().__call__(change, path):
            return False
        changed = Path(path)
        for root in self._roots:
            if root in changed.parents:
                return not any(p.startswith(".") for p in changed.relative_to(root).parts)
        return True


def watch_paths(
    settings: Settings,
    kb_name: str,
    paths: list[Path],
    on_sync: Callable[[Sync], None],
    *,
    stop: threading.Event | None = None,
    debounce_ms: int = DEBOUNCE_MS,
) -> None:
    """Sync `paths` into `kb_name` after every burst of changes until `stop` is set.

    The caller has already synced once. Raises WatchedFolderGone when a watched folder
    disappears; nothing is removed from the KB then.
    """
    folders = [Path(os.path.abspath(p.expanduser())) for p in paths]
    files = {f for f in folders if not f.is_dir()}
    roots = sorted({f.parent if f in files else f for f in folders})
    changes = watch(
        *roots,
        watch_filter=_DocumentFilter(roots),
        debounce=max(debounce_ms * 10, 1600),
        step=debounce_ms,
        stop_event=stop,
        raise_interrupt=True,
    )
    while True:
        try:
            batch = next(changes)
        except StopIteration:
            return  # stopped
        except (FileNotFoundError, RuntimeError) as exc:  # the watcher lost its folder
            _check_roots(roots)
            raise WatchedFolderGone(f"stopped watching: {exc}") from exc
        _check_roots(roots)
        relevant = [path for _, path in batch if _concerns(Path(path), folders, files)]
        if relevant:
            on_sync(_sync(settings, kb_name, paths, len(relevant)))


def _concerns(path: Path, folders: list[Path], files: set[Path]) -> bool:
    """A change under a watched folder, or to a watched file (its folder holds other files)."""
    return path in files or any(
        f not in files and (path == f or f in path.parents) for f in folders
    )


def _check_roots(roots: list[Path]) -> None:
    for root in roots:
        if not root.is_dir():
            raise WatchedFolderGone(
                f"watched folder {root} is gone; stopped watching, nothing was removed"
            )


def _sync(settings: Settings, kb_name: str, paths: list[Path], changes: int) -> Sync:
    try:
        return Sync(changes, report=ingest_paths(settings, kb_name, paths))
    except (IngestUsageError, StorageError, OSError) as exc:
        # A folder emptied or a file argument deleted: `kbqa ingest` refuses and removes
        # nothing; watching goes on, and the next change may make the sync possible again.
        log.debug("sync refused: %s", exc)
        return Sync(changes, error=str(exc))
