"""Three `kbqa serve` processes, three homes (three hosts), one PostgreSQL database."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest
from held_embedding import HOLD_WORD
from postgres_server import PostgresServer
from server_helpers import NO_LLM, REPO, kbqa, kbqa_serve, wait_for_job, wait_until_serving

from kbqa.storage.pg_lock import LOCK_CLASS
from tests.model_cache import link_models
from tests.waiting import wait_for

Hosts = list[str]


def _serve(home: Path, database: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    with log.open("a") as output:
        return kbqa_serve(home, output, KBQA_STORAGE__DATABASE=database, **NO_LLM)


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture(scope="module")
def hosts(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Hosts, list[Path]]]:
    homes = [link_models(tmp_path_factory.mktemp(f"host{i}")) for i in range(3)]
    started = [_serve(home, database, home / "serve.log") for home in homes]
    with ExitStack() as stack:
        for process, _ in started:
            stack.callback(process.wait)
            stack.callback(process.kill)
        for process, url in started:
            wait_until_serving(process, url)
        yield [url for _, url in started], homes


def _upload(url: str, kb: str, name: str, text: str) -> str:
    files = [("files", (name, text.encode(), "text/plain"))]
    response = httpx.post(f"{url}/v1/kbs/{kb}/documents", files=files, timeout=60)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _finished(url: str, job_id: str) -> dict[str, object]:
    with httpx.Client(base_url=url, timeout=60) as client:
        return wait_for_job(client, job_id, timeout=300)


def _sources(url: str, kb: str, query: str) -> set[str]:
    response = httpx.post(
        f"{url}/v1/kbs/{kb}/search", json={"query": query, "top_k": 5}, timeout=60
    )
    assert response.status_code == 200, response.text
    return {hit["source"] for hit in response.json()["results"]}


def test_an_upload_through_one_is_searchable_through_the_others(
    hosts: tuple[Hosts, list[Path]],
) -> None:
    (a, b, c), _ = hosts
    assert httpx.post(f"{a}/v1/kbs", json={"name": "shared"}, timeout=60).status_code == 201
    assert "shared" in {kb["name"] for kb in httpx.get(f"{c}/v1/kbs", timeout=60).json()["kbs"]}
    job = _upload(a, "shared", "otters.txt", "Sea otters hold hands while they sleep.")
    assert _finished(a, job)["state"] == "done"
    for other in (b, c):

        def found(other: str = other) -> bool:
            return "otters.txt" in _sources(other, "shared", "otters sleep")

        wait_for(found, f"{other} finds the upload")


def test_concurrent_ingests_through_two_servers_serialise(
    hosts: tuple[Hosts, list[Path]], database: str
) -> None:
    (a, b, c), _ = hosts
    assert httpx.post(f"{b}/v1/kbs", json={"name": "busy"}, timeout=60).status_code == 201
    texts = {f"note{i}.txt": f"Note {i}: the lighthouse keeper counts {i} gulls." for i in range(2)}
    jobs = [
        (server, _upload(server, "busy", name, text))
        for server, (name, text) in zip((a, b), texts.items(), strict=True)
    ]
    assert [_finished(server, job)["state"] for server, job in jobs] == ["done", "done"]
    documents = httpx.get(f"{c}/v1/kbs/busy/documents", timeout=60).json()["documents"]
    assert sorted(d["source"] for d in documents) == sorted(texts)
    # One commit each, one after the other: the generation counted both.
    assert _generation(database, "busy") == 2


def _generation(database: str, kb: str) -> int:
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute("SELECT uid FROM kbqa_kbs WHERE name = %s", (kb,)).fetchone()
        assert row is not None
        conn.execute(f"SET search_path TO kb_{row[0]}")
        value = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        assert value is not None
        return int(value[0])


def _lock_holders(database: str) -> int:
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
            "AND granted",
            (LOCK_CLASS,),
        ).fetchone()
        return int(row[0]) if row else 0


def test_killing_the_writer_releases_the_lock(
    hosts: tuple[Hosts, list[Path]], database: str, tmp_path: Path
) -> None:
    (a, _, _), homes = hosts
    folder = tmp_path / "many"
    folder.mkdir()
    # Its embedding is held (tests/held_embedding.py): the ingest holds the lock until killed.
    (folder / "held.txt").write_text(f"{HOLD_WORD}: neap tides follow the half moon.\n")
    assert httpx.post(f"{a}/v1/kbs", json={"name": "tides"}, timeout=60).status_code == 201
    writer = kbqa(
        "ingest",
        str(folder),
        "--kb",
        "tides",
        "--home",
        str(homes[2]),
        KBQA_STORAGE__DATABASE=database,
        PYTHONPATH=str(REPO / "tests"),  # where the held_embedding plugin lives
        KBQA_INGEST__LOADER_PLUGINS="held_embedding",
        KBQA_TEST_HELD=str(tmp_path / "held"),
    )
    try:
        wait_for(lambda: _lock_holders(database) == 1, "the CLI ingest holds the KB's lock")
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.communicate()
    job = _upload(a, "tides", "tide.txt", "Spring tides follow the full moon.")
    finished = _finished(a, job)
    assert finished["state"] == "done", finished
    documents = httpx.get(f"{a}/v1/kbs/tides/documents", timeout=60).json()["documents"]
    assert [d["source"] for d in documents] == ["tide.txt"]  # nothing of the killed ingest


def test_a_job_started_on_one_is_visible_from_the_others(
    hosts: tuple[Hosts, list[Path]],
) -> None:
    (a, b, c), _ = hosts
    assert httpx.post(f"{c}/v1/kbs", json={"name": "seen"}, timeout=60).status_code == 201
    job = _upload(c, "seen", "heron.txt", "A grey heron waits motionless in the shallows.")
    early = httpx.get(f"{a}/v1/jobs/{job}", timeout=60)
    assert early.status_code == 200 and early.json()["state"] in ("queued", "running", "done")
    finished = _finished(b, job)  # polled through another server than the one running it
    assert finished["state"] == "done" and finished == _finished(a, job)
    assert httpx.get(f"{a}/v1/jobs/0123456789abcdef", timeout=60).status_code == 404
