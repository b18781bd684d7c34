"""`server.watch`: a real server on loopback keeps a folder in sync with a KB, each sync a job.

Every wait polls the API until a condition holds (the watcher's timing is not under test);
tests.waiting.wait_for's deadline only bounds a run that would otherwise hang.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import LiveServer, make_home, serve_with_model

from tests.fake_chat import FakeChat
from tests.waiting import wait_for


@dataclass
class Watched:
    server: LiveServer
    client: httpx.Client
    folder: Path

    def texts(self, query: str) -> list[str]:
        response = self.client.post("/v1/kbs/w/search", json={"query": query, "top_k": 5})
        if response.status_code == 404:  # before the first sync created the KB
            return []
        response.raise_for_status()
        return [hit["text"] for hit in response.json()["results"]]

    def sources(self) -> set[str]:
        response = self.client.get("/v1/kbs/w/documents")
        if response.status_code == 404:
            return set()
        return {d["source"] for d in response.json()["documents"]}

    def watch_jobs(self) -> list[dict[str, Any]]:
        response = self.client.get("/v1/jobs", params={"kind": "watch", "kb": "w"})
        response.raise_for_status()
        jobs: list[dict[str, Any]] = response.json()["jobs"]
        return jobs

    def finished_sync(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The newest finished watch job whose ingest result satisfies `condition`."""

        def probe() -> dict[str, Any] | None:
            for job in self.watch_jobs():
                if job["state"] == "done" and condition(job["result"]):
                    return job
            return None

        return wait_for(probe, "a watch job")


@pytest.fixture
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    home = make_home(tmp_path_factory, "watch-home")
    folder = home.parent / f"{home.name}-docs"
    folder.mkdir()
    (folder / "first.md").write_text("# Lighthouse\n\nThe lighthouse lamp is code KESTREL.\n")
    server = serve_with_model(
        home, FakeChat(), watch=[{"path": str(folder), "kb": "w"}], job_history_max=100_000
    )
    with server.client() as client:
        yield Watched(server, client, folder)
    server.stop()


def test_a_watched_folder_syncs_each_change_as_a_job(watched: Watched) -> None:
    first = watched.finished_sync(lambda r: r["added"] == 1)
    assert first["kind"] == "watch" and first["files"] == [str(watched.folder)]
    assert first["job_id"].startswith("watch-")
    assert watched.client.get(f"/v1/jobs/{first['job_id']}").json() == first
    assert any("KESTREL" in t for t in watched.texts("lighthouse lamp code"))

    (watched.folder / "second.md").write_text("The ferry leaves at dawn, code MARLIN.\n")
    wait_for(lambda: any("MARLIN" in t for t in watched.texts("ferry code")), "the added file")

    # An editor's atomic save: a hidden temporary file renamed over the original.
    swap = watched.folder / ".second.md.swp"
    swap.write_text("The ferry leaves at noon, code OSPREY.\n")
    os.replace(swap, watched.folder / "second.md")
    wait_for(lambda: any("OSPREY" in t for t in watched.texts("ferry code")), "the edit")
    assert not any("MARLIN" in t for t in watched.texts("ferry code"))
    watched.finished_sync(lambda r: r["updated"] == 1 and r["failed"] == [])

    (watched.folder / "second.md").unlink()
    wait_for(lambda: watched.sources() == {"first.md"}, "the deletion")
    removed = watched.finished_sync(lambda r: r["removed"] == 1)
    assert removed["progress"]["files_total"] == 1  # first.md, unchanged
    assert removed["error"] is None and removed["error_code"] is None


def test_a_deleted_folder_is_logged_and_synced_again_when_back(
    watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kbqa.server")
    watched.finished_sync(lambda r: r["added"] == 1)
    shutil.rmtree(watched.folder)
    wait_for(lambda: any("is missing" in r.message for r in caplog.records), "the log line")
    assert watched.client.get("/healthz").status_code == 200
    assert watched.sources() == {"first.md"}, "nothing removed while the folder is gone"

    watched.folder.mkdir()
    (watched.folder / "again.md").write_text("The mill wheel turns, code HERON.\n")
    wait_for(lambda: watched.sources() == {"again.md"}, "the folder's new content")
    assert any("HERON" in t for t in watched.texts("mill wheel code"))


def test_an_emptied_folder_is_a_failed_sync_that_removes_nothing(watched: Watched) -> None:
    watched.finished_sync(lambda r: r["added"] == 1)
    (watched.folder / "first.md").unlink()

    def refused() -> dict[str, Any] | None:
        return next((j for j in watched.watch_jobs() if j["state"] == "failed"), None)

    job = wait_for(refused, "the refused sync")
    assert job["error_code"] == "invalid_request" and "empty" in job["error"]
    assert watched.sources() == {"first.md"}


def test_shutdown_stops_the_watchers(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = make_home(tmp_path_factory, "watch-stop")
    folder = home.parent / "watched"
    folder.mkdir()
    (folder / "a.txt").write_text("Anchor chain notes.")
    server = serve_with_model(home, FakeChat(), watch=[{"path": str(folder), "kb": "k"}])
    with server.client() as client:
        wait_for(
            lambda: [j for j in client.get("/v1/jobs").json()["jobs"] if j["state"] == "done"],
            "the first sync",
        )
    assert any(t.name == "kbqa-watch-k" for t in threading.enumerate())
    server.stop()
    assert not server.thread.is_alive()
    assert not any(t.name == "kbqa-watch-k" for t in threading.enumerate())
