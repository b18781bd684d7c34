"""Upload jobs in PostgreSQL (kbqa.server.pg_jobs): the rows JobStore keeps, and owners'
liveness through advisory locks that die with their server's session."""

from __future__ import annotations

import dataclasses

from kbqa.server.job_store import Job
from kbqa.server.pg_jobs import PgJobStore, PgOwnerLock
from tests.waiting import wait_for

MESSAGES = {
    ("upload", "queued"): "the server stopped before this upload started",
    ("upload", "running"): "the server stopped during this upload",
}


def test_rows_round_trip_list_fail_and_prune(postgres_url: str) -> None:
    store = PgJobStore(postgres_url)
    jobs = [
        Job(id=f"j{i}", kb="a" if i % 2 else "b", files=["x.txt"], paths=[f"/u/{i}"], owner="o1")
        for i in range(5)
    ]
    for i, job in enumerate(jobs):
        job.created = 1000.0 + i
        store.save(job)
    done = dataclasses.replace(jobs[0], state="done", finished=1010.0, result={"chunks": 3})
    store.save(done)  # an update of the whole row
    assert store.get("j0") == done and store.get("nope") is None
    assert [j.id for j in store.newest(kind="upload", kbs=["a"], limit=10)] == ["j3", "j1"]
    assert [j.id for j in store.newest(kind=None, kbs=None, limit=2)] == ["j4", "j3"]
    assert store.newest(kind="watch", kbs=None, limit=10) == []
    assert store.active_owners() == {"o1"}
    assert store.fail_active("o1", "interrupted", MESSAGES) == 4
    assert store.active_owners() == set()
    failed = store.get("j2")
    assert failed is not None and failed.error_code == "interrupted"
    assert store.paths_in_use() == {f"/u/{i}" for i in range(5)}
    pruned = store.prune(older_than=0.0, keep=3)  # the oldest finished beyond the newest 3
    assert len(pruned) == 2 and len(store.newest(kind=None, kbs=None, limit=10)) == 3


def test_an_owner_is_alive_while_its_session_lives(postgres_url: str) -> None:
    first, second = PgOwnerLock(postgres_url), PgOwnerLock(postgres_url)
    first.acquire()
    second.acquire()
    try:
        with second.if_dead(first.owner) as dead:
            assert dead is False
        with second.if_dead(second.owner) as dead:
            assert dead is False  # itself
        first.release()  # as when its server dies: the session ends, and soon its lock
        wait_for(lambda: _dead(second, first.owner), "the closed session's lock is released")
        with second.if_dead(first.owner) as dead:
            assert dead is True  # the check let go of the lock it took
    finally:
        first.release()
        second.release()


def _dead(checker: PgOwnerLock, owner: str) -> bool:
    with checker.if_dead(owner) as dead:
        return dead
