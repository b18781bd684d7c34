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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, DefaultFilter, watch

from kbqa.ingest.config import IngestConfig
from kbqa.ingest.pipeline import IngestReport, Progress, ingest_paths
from kbqa.ingest.types import IngestUsageError
from kbqa.storage.errors import StorageError

log = logging.getLogger(__name__)

DEBOUNCE_MS = 300
"""Quiet time that ends a burst of changes: an editor's save or a copied folder is one sync."""
IDLE_WAKE_MS = 1000
"""While nothing changes, the watcher wakes this often (to check its folders still exist)."""


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
    settings: IngestConfig,
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
    for changes in change_bursts(paths, stop=stop, debounce_ms=debounce_ms):
        on_sync(sync_once(settings, kb_name, paths, changes))


def change_bursts(
    paths: list[Path],
    *,
    stop: threading.Event | None = None,
    debounce_ms: int = DEBOUNCE_MS,
    first_sync: bool = False,
) -> Iterator[int]:
    """After each burst of changes that concern `paths`, yield how many there were.

    The one watch loop of kbqa: `kbqa ingest --watch` (watch_paths) and the server's watched
    folders (kbqa.server.watchers) both sync after each value. Changes made while the caller
    syncs are kept by the watcher and make the next burst. With `first_sync`, 0 is yielded
    first, as soon as the watcher is live, so that a first sync there misses no change made
    during it. Ends when `stop` is set; raises WatchedFolderGone when a watched folder
    disappears.
    """
    folders = [Path(os.path.abspath(p.expanduser())) for p in paths]
    # A folder deleted before this point is neither a folder nor a file: watching its parent
    # for it would wait forever.
    _check_roots([f for f in folders if not f.is_file()])
    files = {f for f in folders if f.is_file()}
    roots = sorted({f.parent if f in files else f for f in folders})
    changes = watch(
        *roots,
        watch_filter=_DocumentFilter(roots),
        debounce=max(debounce_ms * 10, 1600),
        step=debounce_ms,
        stop_event=stop,
        rust_timeout=IDLE_WAKE_MS,
        yield_on_timeout=True,  # an empty batch: the watcher is live and nothing changed
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
        if first_sync:
            first_sync = False
            yield 0
            continue
        relevant = [path for _, path in batch if _concerns(Path(path), folders, files)]
        if relevant:
            yield len(relevant)


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


def sync_once(
    settings: IngestConfig,
    kb_name: str,
    paths: list[Path],
    changes: int,
    progress: Progress | None = None,
) -> Sync:
    """One sync of `paths`, as `kbqa ingest` does it; a refused one is reported, not raised."""
    try:
        return Sync(changes, report=ingest_paths(settings, kb_name, paths, progress=progress))
    except (IngestUsageError, StorageError, OSError) as exc:
        # A folder emptied or a file argument deleted: `kbqa ingest` refuses and removes
        # nothing; watching goes on, and the next change may make the sync possible again.
        log.debug("sync refused: %s", exc)
        return Sync(changes, error=str(exc))
