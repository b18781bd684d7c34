"""`kbqa ingest --watch`: the watch loop runs in a thread and each test waits for the sync that
holds its change (never a sleep); the KB is read back after each."""

from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbqa.cli import app
from kbqa.ingest.pipeline import ingest_paths
from kbqa.ingest.watch import Sync, WatchedFolderGone, change_bursts, watch_paths
from kbqa.kb_admin import list_documents
from kbqa.settings import Settings, load_settings

WAIT_S = 120  # generous: the CI machine is shared; a passing run waits a fraction of a second


@dataclass
class Watcher:
    """watch_paths in a thread; its syncs arrive on a queue, its exception is kept."""

    folder: Path
    settings: Settings
    syncs: queue.Queue[Sync] = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            try:
                watch_paths(self.settings, "w", [self.folder], self.syncs.put, stop=self.stop)
            except BaseException as exc:
                self.error = exc
            finally:
                self.syncs.put(Sync(changes=0, error="watch ended"))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        # The watcher is live once a change is seen; until then, changes could be missed.
        probe = self.folder / "probe.txt"
        for i in range(WAIT_S * 2):
            probe.write_text(f"probe {i}")
            try:
                self.syncs.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        probe.unlink()
        self.until(lambda s: "probe.txt" not in self.sources())

    def until(self, condition: Callable[[Sync], bool]) -> list[Sync]:
        """Syncs up to and including the first one after which `condition` holds."""
        seen: list[Sync] = []
        while True:
            sync = self.syncs.get(timeout=WAIT_S)
            seen.append(sync)
            if sync.error == "watch ended" or condition(sync):
                return seen

    def sources(self) -> set[str]:
        return {doc["source"] for doc in list_documents(self.settings, "w")}


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Watcher]:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha notes.")
    settings = load_settings(tmp_path / "home")
    ingest_paths(settings, "w", [folder])  # the first sync, as `kbqa ingest` does it
    watcher = Watcher(folder, settings)
    watcher.start()
    yield watcher
    watcher.stop.set()
    assert watcher.thread is not None
    watcher.thread.join(WAIT_S)


def test_add_edit_rename_burst_delete(watcher: Watcher) -> None:
    folder = watcher.folder
    (folder / "b.txt").write_text("Bravo notes.")
    watcher.until(lambda s: "b.txt" in watcher.sources())

    # An editor's atomic save: a hidden temporary file renamed over the original.
    (folder / ".a.txt.swp").write_text("Alpha, edited.")
    os.replace(folder / ".a.txt.swp", folder / "a.txt")
    syncs = watcher.until(lambda s: s.report is not None and s.report.updated == 1)
    assert syncs[-1].report is not None and syncs[-1].report.failed == []

    (folder / "b.txt").rename(folder / "c.txt")
    watcher.until(lambda s: watcher.sources() == {"a.txt", "c.txt"})

    for i in range(5):
        (folder / f"burst{i}.txt").write_text(f"Burst file {i}.")
    syncs = watcher.until(lambda s: len(watcher.sources()) == 7)
    assert sum(s.report.added for s in syncs if s.report) == 5
    assert len(syncs) < 5  # debounced: one sync (two at most on a loaded machine) for 5 saves

    (folder / "c.txt").unlink()
    syncs = watcher.until(lambda s: "c.txt" not in watcher.sources())
    assert syncs[-1].report is not None and syncs[-1].report.removed == 1
    assert watcher.error is None


def test_emptied_folder_is_refused_and_removes_nothing(watcher: Watcher) -> None:
    (watcher.folder / "a.txt").unlink()
    syncs = watcher.until(lambda s: s.error is not None)
    assert syncs[-1].error is not None and syncs[-1].error.startswith("folder is empty")
    assert watcher.sources() == {"a.txt"}


def test_deleted_folder_stops_the_watch_and_keeps_the_kb(watcher: Watcher) -> None:
    shutil.rmtree(watcher.folder)
    watcher.until(lambda s: s.error == "watch ended")
    assert isinstance(watcher.error, WatchedFolderGone)
    assert "is gone; stopped watching, nothing was removed" in str(watcher.error)
    assert watcher.sources() == {"a.txt"}


def test_cli_watch_exits_with_one_line_when_the_folder_goes(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Alpha notes.")
    home = tmp_path / "home"
    settings = load_settings(home)
    done = threading.Event()

    def delete_after_first_sync() -> None:
        while not done.wait(0.05):  # polls the KB, the condition the first sync makes true
            try:
                if list_documents(settings, "default"):
                    shutil.rmtree(folder)
                    return
            except Exception:
                continue  # the KB is still being created

    deleter = threading.Thread(target=delete_after_first_sync, daemon=True)
    deleter.start()
    result = CliRunner().invoke(app, ["--home", str(home), "ingest", str(folder), "--watch"])
    done.set()
    assert result.exit_code == 1
    assert "1 added" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1]
        == f"error: watched folder {folder} is gone; stopped watching, nothing was removed"
    )
    assert [d["source"] for d in list_documents(settings, "default")] == ["a.txt"]


def test_a_folder_gone_before_watching_starts_is_reported_at_once(tmp_path: Path) -> None:
    """Deleted between the first sync and the watch: not mistaken for a file whose parent
    folder would then be watched for ever."""
    with pytest.raises(WatchedFolderGone, match="is gone"):
        next(change_bursts([tmp_path / "deleted"]))
