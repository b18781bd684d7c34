"""Hostile uploads against the real server: a zip bomb, a decompression-bomb image, a
10,000-page PDF and a parser stuck forever each fail alone, the server's memory stays put,
other KBs' uploads never wait behind a parse that holds their lane while one KB's jobs run in
order, a job past its deadline fails `job_timeout`, and SIGTERM stops a stuck parse and the
server exits (the parse would hold it for 600 s).

The stuck and held parsers are tests/stuck_loader.py, loaded as a user's loader plugin is (the
parse workers import it too). Deadlines are short here (8 s a parse, 20 s a job) to keep the
tests fast; every wait is on a job's state or a process's exit, never a measured time, and
no assertion compares two jobs' times: a held parse ends only when the test releases it.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile_files import STUCK_JSON, blank_pdf, docx_bomb, held_json, png_bomb
from server_helpers import (
    QUICK_LLM,
    REPO,
    LiveServer,
    kbqa_serve,
    llm_of,
    make_home,
    start_server,
    wait_for_job,
    wait_until_serving,
)

from kbqa.server.app import create_app
from kbqa.server.job_store import JobStore
from kbqa.settings import load_settings
from tests.fake_chat import FakeChat
from tests.model_cache import link_models
from tests.waiting import HANG_GUARD_S, wait_for

PARSE_TIMEOUT_S = 8
JOB_TIMEOUT_S = 20
RSS_ALLOWANCE_KB = 500 * 1024
SMALL = ("small.md", b"# Small\n\nThe lighthouse keeper feeds two cats.\n")


def serve(tmp_path_factory: pytest.TempPathFactory, parse_timeout_s: float) -> LiveServer:
    home = make_home(tmp_path_factory, "hostile-home")
    overrides: dict[str, Any] = {
        "llm": QUICK_LLM,
        "server": {"api_key": "", "job_timeout_s": JOB_TIMEOUT_S},
        "ingest": {"parse_timeout_s": parse_timeout_s, "loader_plugins": ["stuck_loader"]},
    }
    settings = load_settings(home, overrides=overrides)
    return start_server(create_app(settings, chat_model=FakeChat()), settings)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = serve(tmp_path_factory, PARSE_TIMEOUT_S)
    yield server
    server.stop()


@pytest.fixture
def patient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose parses run until the test releases them: their deadline is the tests'
    hang guard, so none can end a held parse before the test has seen what happens while it is
    held. (The embedding model is loaded once per process, so a second server costs little.)"""
    server = serve(tmp_path_factory, HANG_GUARD_S)
    yield server
    server.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


def upload(client: httpx.Client, kb: str, *files: tuple[str, bytes]) -> str:
    """Upload into `kb` (created if new); the job's id."""
    created = client.post("/v1/kbs", json={"name": kb})
    assert created.status_code in (201, 409), created.text
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    response = client.post(f"/v1/kbs/{kb}/documents", files=parts)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def state(client: httpx.Client, job_id: str) -> str:
    job_state: str = client.get(f"/v1/jobs/{job_id}").json()["state"]
    return job_state


def memory_kb(field: str, pid: int | str = "self") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    assert found is not None
    return int(found.group(1))


def test_hostile_uploads_fail_alone(live: LiveServer, client: httpx.Client) -> None:
    warm = wait_for_job(client, upload(client, "warm", SMALL), timeout=300)  # loads the model
    assert warm["state"] == "done", warm
    # The server runs in this process (uvicorn in a thread): its memory is ours. Reset the
    # peak so that it measures from here ("5": clear the high-water mark, Linux ≥ 4.0).
    baseline = memory_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")

    hostile = {
        "bomb.docx": (docx_bomb(100), "too_large"),  # 100 MB of XML, ~300 KB on disk
        "bomb.png": (png_bomb(), "too_large"),  # 1.6 G pixels
        "pages.pdf": (blank_pdf(10_000), "too_large"),
        "stuck.json": (STUCK_JSON, "parse_timeout"),
    }
    jobs = {name: upload(client, "hostile", (name, data)) for name, (data, _) in hostile.items()}
    small = upload(client, "other", SMALL)

    for name, (_, code) in hostile.items():
        job = wait_for_job(client, jobs[name], timeout=120)
        assert job["state"] == "done", job
        result = job["result"]
        assert result["added"] == 0 and len(result["failed"]) == 1, result
        assert result["failed"][0]["error_code"] == code, result
        assert "(ingest." in result["failed"][0]["error"]  # names the setting
    done = wait_for_job(client, small, timeout=120)
    assert done["state"] == "done" and done["result"]["added"] == 1, done

    peak = memory_kb("VmHWM")
    assert peak - baseline < RSS_ALLOWANCE_KB, (baseline, peak)


def test_other_kbs_do_not_wait_behind_a_held_parse_and_one_kb_runs_in_order(
    patient: LiveServer, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    with patient.client() as client:
        held = upload(client, "busy", ("held.json", held_json(release)))
        behind = upload(client, "busy", SMALL)
        wait_for(lambda: state(client, held) == "running", "the held parse runs")

        # Another KB's upload runs to its end while "busy"'s lane is held…
        done = wait_for_job(client, upload(client, "other", SMALL))
        assert done["state"] == "done" and done["result"]["added"] == 1, done
        # …and "busy"'s next job waits for the held one, which nothing but the release ends.
        assert (state(client, held), state(client, behind)) == ("running", "queued")

        release.touch()
        for job_id in (held, behind):
            job = wait_for_job(client, job_id)
            assert job["state"] == "done" and job["result"]["added"] == 1, job
        listed = client.get("/v1/kbs/busy/documents").json()["documents"]
        assert sorted(d["source"] for d in listed) == ["held.json", "small.md"]


def test_a_job_past_its_deadline_fails_and_the_next_upload_to_its_kb_runs(
    live: LiveServer, client: httpx.Client
) -> None:
    # Three stuck files take 3 × PARSE_TIMEOUT_S, past the job's deadline.
    stuck = [(f"stuck{i}.json", STUCK_JSON) for i in range(3)]
    assert len(stuck) * PARSE_TIMEOUT_S > JOB_TIMEOUT_S
    slow = upload(client, "slow", *stuck)
    after = upload(client, "slow", SMALL)

    job = wait_for_job(client, slow, timeout=120)
    assert job["state"] == "failed" and job["error_code"] == "job_timeout", job
    assert job["error"] == (
        f"the job ran longer than {JOB_TIMEOUT_S} s (server.job_timeout_s) and was stopped; "
        "nothing of it was stored"
    )
    done = wait_for_job(client, after, timeout=120)
    assert done["state"] == "done" and done["result"]["added"] == 1, done
    listed = client.get("/v1/kbs/slow/documents").json()["documents"]
    assert [d["source"] for d in listed] == ["small.md"]


def descendants(pid: int) -> dict[int, int]:
    """Processes under `pid` and their parents' ids, from /proc: the fork server and the
    resource tracker are its children, the parse workers the fork server's."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, int] = {}
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= {child: parents[child] for child in frontier}
    return found


def parse_workers(pid: int) -> set[int]:
    return {child for child, parent in descendants(pid).items() if parent != pid}


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_sigterm_stops_a_stuck_parse_and_exits(live: LiveServer, tmp_path: Path) -> None:
    home = link_models(tmp_path / "home")
    log = (tmp_path / "serve.log").open("w")
    process, url = kbqa_serve(
        home,
        log,
        PYTHONPATH=str(REPO / "tests"),  # where the stuck_loader plugin lives
        KBQA_INGEST__LOADER_PLUGINS="stuck_loader",
        KBQA_INGEST__PARSE_TIMEOUT_S="600",  # only SIGTERM can end the parse
        **llm_of(live),
    )
    try:
        wait_until_serving(process, url)
        with httpx.Client(base_url=url, timeout=60) as client:
            job_id = upload(client, "a", ("stuck.json", STUCK_JSON))
            wait_for(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "running",
                "the job runs",
            )
        wait_for(lambda: parse_workers(process.pid), "a worker parses the stuck file")
        workers = set(descendants(process.pid))

        process.send_signal(signal.SIGTERM)
        # The stuck parse would hold the process for its 600 s parse timeout: an exit at all
        # (not timed against the grace period, which a loaded box may overrun) is SIGTERM's.
        assert process.wait(timeout=HANG_GUARD_S) == 0
        wait_for(lambda: all(gone(pid) for pid in workers), "the workers exit")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    store = JobStore(home / "jobs.db")
    try:
        job = store.get(job_id)
    finally:
        store.close()
    assert job is not None and job.state == "failed" and job.error_code == "interrupted", job
