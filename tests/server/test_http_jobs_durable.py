"""Upload jobs outlive the server that ran them: restarts, crashes, history limits and a broken
jobs.db, over real HTTP on loopback.

In-thread servers (FakeChat: the model is not under test) share a home with the test; the
crash and SIGTERM tests run `kbqa serve` as a process of its own so that it can really die, and
hold its ingest mid-embedding (tests/held_embedding.py) so that it dies there, whatever the
machine's speed.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from held_embedding import HOLD_WORD
from server_helpers import (
    NO_LLM,
    REPO,
    LiveServer,
    kbqa_serve,
    make_home,
    serve_with_model,
    server_settings,
    wait_for_job,
    wait_until_serving,
    write_documents,
)

from kbqa.ingest.pipeline import ingest_paths
from kbqa.kb_admin import check_kb, list_documents
from kbqa.server.job_store import Job, JobStore, OwnerLock
from kbqa.server.jobs import INTERRUPTED_MESSAGES
from kbqa.settings import SettingsError, load_settings
from tests.fake_chat import FakeChat
from tests.waiting import wait_for

DAY = 86400.0
# Its first embedding batch is held (HOLD_WORD) until the server stops its jobs.
BIG = "\n\n".join(
    [HOLD_WORD, *(f"Paragraph {i} tells of lighthouse {i} on the coast." for i in range(200))]
)


def upload(client: httpx.Client, kb: str, *files: tuple[str, bytes]) -> str:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    response = client.post(f"/v1/kbs/{kb}/documents", files=parts)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


@contextmanager
def serving(home: Path, **server: Any) -> Iterator[LiveServer]:
    live = serve_with_model(home, FakeChat(), **server)
    try:
        yield live
    finally:
        live.stop()


@contextmanager
def serve_process(home: Path, log: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """`kbqa serve` on `home` in a process of its own (openai backend, never called), holding
    BIG's embedding; the file that appears once it holds."""
    held = log.with_suffix(".held")
    with log.open("a") as output:
        process, url = kbqa_serve(
            home,
            output,
            PYTHONPATH=str(REPO / "tests"),  # where the held_embedding plugin lives
            KBQA_INGEST__LOADER_PLUGINS="held_embedding",
            KBQA_TEST_HELD=str(held),
            **NO_LLM,
        )
        try:
            wait_until_serving(process, url)
            yield process, url, held
        finally:
            process.kill()
            process.wait()


def home_with_kb(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A home whose `default` KB holds the test documents."""
    home = make_home(tmp_path_factory, name)
    ingest_paths(server_settings(home), "default", [write_documents(home.parent / f"{name}-d")])
    return home


def sources(home: Path, kb: str = "default") -> set[str]:
    return {d["source"] for d in list_documents(server_settings(home), kb)}


def test_a_job_survives_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = make_home(tmp_path_factory, "jobs-restart")
    with serving(home) as first, first.client() as client:
        assert client.post("/v1/kbs", json={"name": "notes"}).status_code == 201
        otters = ("otters.md", b"# Otters\n\nThey hold hands.")
        job_id = upload(client, "notes", otters, ("e.txt", b""))
        finished = wait_for_job(client, job_id)
    assert finished["state"] == "done" and finished["result"]["added"] == 1
    assert [Path(f["path"]).name for f in finished["result"]["failed"]] == ["e.txt"]

    with serving(home) as second, second.client() as client:
        assert get_job(client, job_id) == finished  # the same JSON, field for field
        assert finished["error"] is None and finished["error_code"] is None
        assert client.get("/v1/jobs/0123456789abcdef").status_code == 404


def test_a_server_killed_mid_ingest_leaves_its_jobs_failed_interrupted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = home_with_kb(tmp_path_factory, "jobs-crash")
    before = sources(home)
    with (
        serve_process(home, home.parent / "crash.log") as (process, url, _),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        running = upload(client, "default", ("lighthouses.txt", BIG.encode()))
        queued = upload(client, "default", ("owls.md", b"# Owls\n\nOwls hunt at night."))
        # Killed wherever it is: held before its commit, it cannot have finished.
        wait_for(lambda: get_job(client, running)["state"] == "running", "it runs")
        assert get_job(client, queued)["state"] == "queued"
        process.send_signal(signal.SIGKILL)
        process.wait()

    with serving(home) as after, after.client() as client:
        interrupted = get_job(client, running)
        assert interrupted["state"] == "failed" and interrupted["error_code"] == "interrupted"
        assert interrupted["error"] == INTERRUPTED_MESSAGES["running"]
        assert interrupted["result"] is None and interrupted["files"] == ["lighthouses.txt"]
        never_ran = get_job(client, queued)
        assert never_ran["state"] == "failed" and never_ran["error_code"] == "interrupted"
        assert never_ran["error"] == INTERRUPTED_MESSAGES["queued"]

        # Nothing of the killed ingest reached the KB, and what was there is intact.
        assert sources(home) == before
        assert check_kb(after.settings, "default") == []
        # Only the live server's owner lock is left; the dead one's was cleaned up.
        assert len(list((home / "jobs.owners").glob("*.lock"))) == 1

        # Uploading again, as the message says, works.
        again = wait_for_job(client, upload(client, "default", ("owls.md", b"# Owls\n\nAt night.")))
        assert again["state"] == "done" and again["result"]["added"] == 1
    assert sources(home) == before | {"owls.md"}


def test_sigterm_finishes_the_running_ingest_and_fails_the_queued_job(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = home_with_kb(tmp_path_factory, "jobs-sigterm")
    before = sources(home)
    with serve_process(home, home.parent / "sigterm.log") as (process, url, held):
        with httpx.Client(base_url=url, timeout=60) as client:
            running = upload(client, "default", ("lighthouses.txt", BIG.encode()))
            queued = upload(client, "default", ("owls.md", b"# Owls\n\nOwls hunt at night."))
            # Parsed and embedding: the stop lets it finish its one file (a parse would be
            # killed); the hold lasts until the server has stopped its jobs, so the queued one
            # can never start.
            wait_for(held.exists, "the upload is being embedded")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=300) == 0

    with serving(home) as after, after.client() as client:
        finished = get_job(client, running)
        assert finished["state"] == "done" and finished["result"]["added"] == 1
        assert finished["progress"]["files_done"] == 1 and finished["progress"]["chunks"] > 10
        never_ran = get_job(client, queued)
        assert never_ran["state"] == "failed" and never_ran["error_code"] == "interrupted"
        assert never_ran["error"] == INTERRUPTED_MESSAGES["queued"]
    assert sources(home) == before | {"lighthouses.txt"}
    assert check_kb(server_settings(home), "default") == []


def stored_job(home: Path, **fields: Any) -> Job:
    """Write a job row straight into the home's jobs.db, as an earlier server would have."""
    fields.setdefault("kb", "default")
    job = Job(id=os.urandom(16).hex(), files=[], **fields)
    store = JobStore(home / "jobs.db")
    store.save(job)
    store.close()
    return job


def test_only_jobs_of_servers_that_are_gone_are_failed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Another `kbqa serve` on the same home is alive while it holds its owner lock: its jobs
    are left alone. The locks of dead servers, left behind or not, are free."""
    home = home_with_kb(tmp_path_factory, "jobs-owners")
    neighbour = OwnerLock(home / "jobs.owners")
    neighbour.acquire()
    stale = home / "jobs.owners" / "died.lock"  # a server died: its lock file stays, unlocked
    stale.touch()
    alive = stored_job(home, owner=neighbour.owner, state="running")
    dead_running = stored_job(home, owner="died", state="running")
    dead_queued = stored_job(home, owner="no-lock-file-at-all", state="queued")

    with serving(home) as server, server.client() as client:
        assert get_job(client, alive.id)["state"] == "running"
        for job, state in ((dead_running, "running"), (dead_queued, "queued")):
            seen = get_job(client, job.id)
            assert seen["state"] == "failed" and seen["error_code"] == "interrupted"
            assert seen["error"] == INTERRUPTED_MESSAGES[state]
        assert not stale.exists()

        # The neighbour dies while this server runs: asking about its job notices.
        os.close(neighbour._fd or -1)  # as its death would: the file stays, unlocked
        seen = get_job(client, alive.id)
        assert seen["state"] == "failed" and seen["error_code"] == "interrupted"
        assert check_kb(server.settings, "default") == []


def test_history_is_bounded_by_count(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = make_home(tmp_path_factory, "jobs-count")
    uploads = home / "uploads" / "notes"
    with serving(home, job_history_max=2) as server, server.client() as client:
        client.post("/v1/kbs", json={"name": "notes"})
        first = upload(client, "notes", ("a.md", b"# A\n\nAlpha."), ("empty.txt", b""))
        assert wait_for_job(client, first)["state"] == "done"
        assert (uploads / "empty.txt").is_file()  # failed to ingest, but kept with its job
        second = wait_for_job(client, upload(client, "notes", ("b.md", b"# B\n\nBeta.")))
        third = wait_for_job(client, upload(client, "notes", ("c.md", b"# C\n\nGamma.")))
        assert second["state"] == third["state"] == "done"
        wait_for(lambda: client.get(f"/v1/jobs/{first}").status_code == 404, "pruned")
        assert get_job(client, second["job_id"]) == second
        # The pruned job's leftover is gone; its document's file stays with the KB.
        assert sorted(p.name for p in uploads.iterdir()) == ["a.md", "b.md", "c.md"]
        assert sources(home, "notes") == {"a.md", "b.md", "c.md"}


def test_history_is_bounded_by_age_and_keeps_files_still_in_use(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = make_home(tmp_path_factory, "jobs-age")
    uploads = home / "uploads" / "notes"
    uploads.mkdir(parents=True)
    for name in ("doc.md", "leftover.txt", "saved-again.txt", "shared.txt"):
        (uploads / name).write_text(f"Text of {name}.")
    ingest_paths(server_settings(home), "notes", [uploads / "doc.md"])
    now = time.time()
    created = now - 30 * DAY
    for name in ("doc.md", "leftover.txt", "shared.txt"):
        os.utime(uploads / name, (created - 5, created - 5))

    def old(*names: str, **fields: Any) -> Job:
        paths = [str(uploads / n) for n in names]
        return stored_job(
            home, kb="notes", paths=paths, owner="x", state="done", created=created, **fields
        )

    old_job = old("doc.md", "leftover.txt", "saved-again.txt", "shared.txt", finished=created)
    recent = old("shared.txt", finished=now - DAY)
    failed = old("leftover.txt", finished=now - 10 * DAY, error="boom", error_code="ingest_failed")

    with serving(home, job_history_days=7) as server, server.client() as client:
        for gone in (old_job, failed):
            assert client.get(f"/v1/jobs/{gone.id}").status_code == 404
        assert get_job(client, recent.id)["state"] == "done"
    # doc.md: a document; shared.txt: a kept job names it; saved-again.txt: newer than its job.
    assert sorted(p.name for p in uploads.iterdir()) == ["doc.md", "saved-again.txt", "shared.txt"]
    assert sources(home, "notes") == {"doc.md"}


@pytest.mark.parametrize("damage", ["garbage", "directory", "other-schema", "truncated"])
def test_a_broken_jobs_db_is_moved_aside(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    home = make_home(tmp_path_factory, f"jobs-{damage}")
    db = home / "jobs.db"
    if damage == "garbage":
        db.write_bytes(b"this is not a database\n" * 100)
    elif damage == "directory":
        db.mkdir()
    elif damage == "other-schema":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, what TEXT)")
    else:
        job = stored_job(home, owner="x", state="done", finished=time.time())
        assert job.id
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2 + 100)  # header intact, pages cut
            f.seek(db.stat().st_size - 50)
            f.write(b"\xff" * 50)
        for suffix in ("-wal", "-shm"):
            (home / f"jobs.db{suffix}").unlink(missing_ok=True)

    with (
        caplog.at_level(logging.WARNING, logger="kbqa.server"),
        serving(home) as server,
        server.client() as client,
    ):
        assert client.get("/healthz").status_code == 200
        client.post("/v1/kbs", json={"name": "notes"})
        job_id = upload(client, "notes", ("a.md", b"# A\n\nAlpha."))
        assert wait_for_job(client, job_id)["state"] == "done"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("job database" in w and "moved it" in w for w in warnings), warnings
    assert len(list(home.glob("jobs.db.corrupt-*"))) >= 1
    with serving(home) as again, again.client() as client:
        assert get_job(client, job_id)["state"] == "done"  # the new database is durable


@pytest.mark.parametrize(
    ("key", "value"),
    [("job_history_days", "0"), ("job_history_max", "0"), ("job_history_max", "many")],
)
def test_history_settings_are_validated(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"server.{key}"):
        load_settings(tmp_path, overrides={"server": {key: value}})
    assert load_settings(tmp_path, overrides={"server": {key: "3"}}).server.model_dump()[key] == 3


def test_an_upload_after_shutdown_is_the_one_shutting_down_error(tmp_path: Path) -> None:
    from kbqa.server.errors import ShuttingDown
    from kbqa.server.jobs import JobManager

    manager = JobManager(load_settings(tmp_path / "home", overrides={"server": {"api_key": ""}}))
    manager.start()
    manager.shutdown()
    upload = tmp_path / "note.txt"
    upload.write_text("a note", encoding="utf-8")
    with pytest.raises(ShuttingDown) as raised:
        manager.submit("default", [upload])
    assert (raised.value.status, raised.value.code) == (503, "shutting_down")
    assert raised.value.headers["Retry-After"] == "5"
