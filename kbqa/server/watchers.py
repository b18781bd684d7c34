"""Watched folders (`server.watch`): each one kept in sync with its KB while the server runs.

One thread per folder follows kbqa.ingest.watch.change_bursts, the same loop as `kbqa ingest
--watch`; every sync (the first one at start, then one after each burst of changes) is a job of
kind "watch" run by the JobManager, queued with the uploads, so `GET /v1/jobs/{id}` and
`GET /v1/jobs?kind=watch` report it like an upload's ingest.

A folder that is missing at start, or deleted or unmounted while watched, is logged once and
looked for again every RECHECK_S seconds; when it is back, it is synced and watched again.
Nothing is removed from the KB meanwhile (`kbqa ingest` refuses a missing folder the same way).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import CancelledError

from kbqa.ingest.watch import WatchedFolderGone, change_bursts
from kbqa.server.jobs import JobManager
from kbqa.settings import Settings, WatchFolder

log = logging.getLogger("kbqa.server")

RECHECK_S = 2.0
"""How often a missing watched folder is looked for, and a busy KB's sync retried."""
BUSY = "kb_busy"
"""A sync refused because another ingest (a `kbqa ingest` beside the server) holds the KB."""


class FolderWatchers:
    """The watchers of `settings.server.watch`: `start` them with the server, `stop` them
    (no new syncs) before the JobManager shuts down, and `join` them after."""

    def __init__(self, settings: Settings, jobs: JobManager) -> None:
        self._entries = settings.server.watch
        self._jobs = jobs
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for entry in self._entries:
            thread = threading.Thread(
                target=self._follow,
                args=(entry,),
                name=f"kbqa-watch-{entry.kb}",
                daemon=True,  # never keeps a dying process alive; stop() ends it cleanly
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                log.error("kbqa: the watcher %s did not stop within %s s", thread.name, timeout_s)

    def _follow(self, entry: WatchFolder) -> None:
        folder = entry.path
        log.info("kbqa: watching %s for knowledge base %s", folder, entry.kb)
        while not self._stop.is_set():
            if not folder.is_dir():
                log.error(
                    "kbqa: watched folder %s is missing (deleted or unmounted); nothing was "
                    "removed from %s; looking for it again every %g s",
                    folder,
                    entry.kb,
                    RECHECK_S,
                )
                while not folder.is_dir():
                    if self._stop.wait(RECHECK_S):
                        return
                log.info("kbqa: watched folder %s is back; syncing it", folder)
            try:
                # The first value (0) comes once the watcher is live: the first sync, which
                # then misses nothing saved during it.
                for changes in change_bursts([folder], stop=self._stop, first_sync=True):
                    if not self._sync(entry, changes):
                        return
                return  # stopped
            except WatchedFolderGone:
                continue  # logged at the top of the loop
            except Exception as e:  # a watcher must never take the server down
                log.error("kbqa: watching %s failed: %s", folder, e, exc_info=e)
                if self._stop.wait(RECHECK_S):
                    return

    def _sync(self, entry: WatchFolder, changes: int) -> bool:
        """Run one sync job to its end (retried while the KB is busy); False if stopping."""
        while True:
            submitted = self._jobs.submit_watch(entry.kb, entry.path)
            if submitted is None:
                return False
            job, future = submitted
            try:
                future.result()
            except CancelledError:  # the server stopped before it ran
                return False
            done = self._jobs.get(job.id)
            if done is None:
                return True
            if done.state == "done" and done.result is not None:
                r = done.result
                log.info(
                    "kbqa: synced %s after %d change(s): %d added, %d updated, %d removed, "
                    "%d failed (job %s)",
                    entry.path,
                    changes,
                    r["added"],
                    r["updated"],
                    r["removed"],
                    len(r["failed"]),
                    job.id,
                )
                return True
            log.warning("kbqa: sync of %s refused: %s (job %s)", entry.path, done.error, job.id)
            if done.error_code != BUSY:
                return True  # an emptied folder: the next change may make a sync possible
            if self._stop.wait(RECHECK_S):
                return False
