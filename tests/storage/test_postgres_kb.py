"""KBs in PostgreSQL: the layout, the advisory write lock, several hosts, damage, outages.

The suite's other storage tests run on PostgreSQL too (tests/storage/conftest.py); these
are the ones whose SQLite counterparts reach into files (the lock file, `kb.sqlite`).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from postgres_server import PostgresServer, find_binaries
from storage_helpers import DIM, KBsAt, make_doc, random_doc, unit_vectors

from kbqa.storage import pg_pool
from kbqa.storage.config import check_kb
from kbqa.storage.errors import KBBusy, KBDamaged, KBExists, KBNotFound, StorageError
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.pg_lock import LOCK_CLASS
from kbqa.storage.pg_store import PostgresStore
from kbqa.storage.places import kbs_dir_with_database
from tests.waiting import HANG_GUARD_S

pytestmark = pytest.mark.databases("postgresql")


def _sql(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement as a person with psql would (autocommit), inside the KB's schema."""
    with psycopg.connect(url, autocommit=True) as conn:
        (uid,) = conn.execute("SELECT uid FROM kbqa_kbs WHERE name = 'kb'").fetchone() or ("",)
        conn.execute(f"SET search_path TO kb_{uid}")
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def built(kbs_dir: Path, rng: np.random.Generator) -> Iterator[str]:
    """A closed KB `kb` at generation 2 with 3 documents; yields the database URL."""
    with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=DIM) as kb:
        kb.sync([random_doc(rng, f"/docs/{i}.txt", 4) for i in range(2)], [])
        kb.sync([random_doc(rng, "/docs/2.txt", 4)], [])
        assert kb.check() == []
    url = getattr(kbs_dir, "database", None)
    assert url is not None
    yield url


def _check(kbs_dir: Path) -> list[str]:
    return check_kb(KBsAt(kbs_dir), "kb")


def test_create_open_list_delete(kbs_dir: Path, tmp_path: Path) -> None:
    with KnowledgeBase.create(kbs_dir, "知识库_1", embedding="fake", dim=DIM) as kb:
        assert kb.name == "知识库_1" and kb.info().chunks == 0
        # This host's folder holds only the index cache, hidden from a SQLite listing.
        assert kb.path.parent == kbs_dir / ".postgresql"
    assert KnowledgeBase.list_names(kbs_dir) == ["知识库_1"]
    assert KnowledgeBase.list_names(tmp_path / "kbs") == []  # the same folder without the URL
    with pytest.raises(KBExists):
        KnowledgeBase.create(kbs_dir, "知识库_1", embedding="fake", dim=DIM)
    with pytest.raises(StorageError, match="faiss backend"):
        KnowledgeBase.create(kbs_dir, "m", embedding="fake", dim=DIM, backend="milvus")
    KnowledgeBase.delete(kbs_dir, "知识库_1")
    assert KnowledgeBase.list_names(kbs_dir) == []
    assert list((kbs_dir / ".postgresql").iterdir()) == []
    with pytest.raises(KBNotFound):
        KnowledgeBase.open(kbs_dir, "知识库_1")


def test_another_host_sees_each_commit(
    kbs_dir: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Two homes (two hosts) on one database: B's FAISS cache follows A's commits."""
    url = getattr(kbs_dir, "database", None)
    other_home = kbs_dir_with_database(tmp_path / "host-b" / "kbs", url)
    docs = [random_doc(rng, f"/docs/{i}.txt", 3) for i in range(2)]
    with (
        KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=DIM) as a,
        KnowledgeBase.open(other_home, "kb") as b,
    ):
        query = docs[1].vectors[2]
        assert b.search(query, "", 1) == []
        a.sync(docs, [])
        (hit,) = b.search(query, "", 1)
        assert hit.chunk_id == a.search(query, "", 1)[0].chunk_id and hit.score > 0.999
        a.remove_documents(["/docs/1.txt"])
        assert all(h.source != "1.txt" for h in b.search(query, "", 10))
        b.sync([random_doc(rng, "/docs/b.txt", 2)], [])
        assert {d.source for d in a.documents()} == {"0.txt", "b.txt"}
        assert a.check() == [] and b.check() == []
        # A third host, opened now, starts from this folder's newest index file (B's) and
        # catches up with A's later commits by chunk ids; every host ranks alike.
        a.sync([random_doc(rng, f"/docs/late{i}.txt", 2) for i in range(3)], ["/docs/0.txt"])
        with KnowledgeBase.open(other_home, "kb") as c:
            for query in unit_vectors(rng, 5):
                expected = [(h.chunk_id, h.score) for h in a.search(query, "", 6)]
                assert [(h.chunk_id, h.score) for h in b.search(query, "", 6)] == expected
                assert [(h.chunk_id, h.score) for h in c.search(query, "", 6)] == expected


_HOLD_LOCK = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
kb_id = conn.execute("SELECT id FROM kbqa_kbs WHERE name = 'kb'").fetchone()[0]
assert conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (int(sys.argv[2]), kb_id)).fetchone()[0]
print("locked", flush=True)
time.sleep(60)
"""


def test_write_lock_is_shared_through_the_database_and_dies_with_its_holder(
    built: str, kbs_dir: Path, rng: np.random.Generator
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, built, str(LOCK_CLASS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    with KnowledgeBase.open(kbs_dir, "kb") as kb:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(KBBusy), kb.write_lock(timeout=0.2):
                pass
            with pytest.raises(KBBusy):
                KnowledgeBase.delete(kbs_dir, "kb")
            assert len(kb.search(unit_vectors(rng, 1)[0], "chunk", 3)) == 3  # readers never wait
        finally:
            holder.kill()
            holder.wait()
        # The server dropped the killed holder's lock with its connection.
        with kb.write_lock(timeout=10), kb.write_lock(timeout=0):
            assert kb.sync([random_doc(rng, "/docs/a.txt", 1)], []) == 1
        with kb.write_lock():
            other = KnowledgeBase.open(kbs_dir, "kb")
            with pytest.raises(KBBusy), other.write_lock(timeout=0.1):
                pass
            other.close()


def test_keyword_scores_are_those_of_sqlite(
    kbs_dir: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    texts = [
        "安装 CUDA 11.8 驱动 450.80.02 之后 重启",
        "python3.9 和 chatglm2-6b 的 INT4 量化",
        "知识库 问答 系统 的 部署 文档 知识库",
        "C++ and C# examples of the driver API",
        "量化 INT4 需要 CUDA",
    ]
    vectors = unit_vectors(rng, len(texts))
    with (
        KnowledgeBase.create(kbs_dir, "pg", embedding="fake", dim=DIM) as pg,
        KnowledgeBase.create(tmp_path / "sqlite", "lite", embedding="fake", dim=DIM) as lite,
    ):
        for kb in (pg, lite):
            kb.sync([make_doc("/docs/a.txt", texts, vectors)], [])
            kb.sync([make_doc("/docs/b.txt", texts[:2], vectors[:2])], [])
        for query in ["CUDA 驱动", "INT4 量化 python3.9", "知识库 部署", "c++ driver", "无关"]:
            got = pg._store, lite._store
            with pg._reading(), lite._reading():
                pg_hits = got[0].keyword_search(query, 10, None)
                lite_hits = got[1].keyword_search(query, 10, None)
            assert [r for r, _ in pg_hits] == [r for r, _ in lite_hits], query
            assert np.allclose([s for _, s in pg_hits], [s for _, s in lite_hits]), query
            with pg._reading(), lite._reading():
                filtered = got[0].keyword_search(query, 10, ["b.txt"])
                assert filtered == [h for h in pg_hits if h[0] > len(texts)]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("UPDATE chunks SET text = 'forged' WHERE id = 3", "checksum"),
        ("UPDATE chunks SET vector = '\\x00'::bytea WHERE id = 1", "dimension"),
        ("DELETE FROM postings WHERE id = 2", "keyword index out of step"),
        ("UPDATE postings SET tf = tf + 1 WHERE id = 5", "other counts"),
        ("UPDATE terms SET df = df + 3 WHERE term = 'chunk'", "document frequency"),
        ("UPDATE totals SET tokens = tokens + 1", "totals"),
        (
            "ALTER TABLE chunks DROP CONSTRAINT chunks_doc_id_fkey; "
            "UPDATE chunks SET doc_id = 'gone' WHERE id = 4",
            "belong to no document",
        ),
    ],
)
def test_check_finds_hand_edits(built: str, kbs_dir: Path, edit: str, expected: str) -> None:
    assert _check(kbs_dir) == []
    for statement in edit.split("; "):
        _sql(built, statement)
    problems = _check(kbs_dir)
    assert any(expected in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_dropped_table_and_missing_meta_are_damage(built: str, kbs_dir: Path) -> None:
    _sql(built, "DELETE FROM meta WHERE key = 'dim'")
    with pytest.raises(KBDamaged, match="'dim' is missing"):
        KnowledgeBase.open(kbs_dir, "kb")
    _sql(built, "DROP TABLE postings")
    assert _check(kbs_dir) == ["knowledge base kb is damaged: table postings is missing"]


def test_stale_cache_file_is_rebuilt(built: str, kbs_dir: Path, rng: np.random.Generator) -> None:
    with KnowledgeBase.open(kbs_dir, "kb") as kb:
        files = sorted(kb.path.glob("index.*.faiss"))
        assert [f.name for f in files] == ["index.1.faiss", "index.2.faiss"]
        files[-1].write_bytes(b"not faiss")
        assert any("corrupt" in p for p in kb.check())
        assert len(kb.search(unit_vectors(rng, 1)[0], "chunk", 12)) == 12


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A cluster of this test's own, which it stops and starts."""
    bindir, why_not = find_binaries()
    if bindir is None:
        pytest.skip(why_not)
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def test_server_down_is_a_clear_error_and_work_resumes_after(
    own_server: PostgresServer, tmp_path: Path, rng: np.random.Generator
) -> None:
    url = own_server.create_database()
    kbs_dir = kbs_dir_with_database(tmp_path / "kbs", url)
    try:
        with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=DIM) as kb:
            kb.sync([random_doc(rng, "/docs/0.txt", 3)], [])
            own_server.stop()
            with pytest.raises(StorageError, match="PostgreSQL at postgresql://") as failed:
                kb.sync([random_doc(rng, "/docs/1.txt", 3)], [])
            assert "\n" not in str(failed.value)
            with pytest.raises(StorageError, match="PostgreSQL"):
                kb.search(unit_vectors(rng, 1)[0], "chunk", 3)
            own_server.start()
            # The pool reconnects with a back-off: wait until it does, then nothing is lost.
            documents = _once_reachable(lambda: [d.source for d in kb.documents()])
            assert documents == ["0.txt"]  # nothing half-written
            assert kb.sync([random_doc(rng, "/docs/1.txt", 3)], []) == 3
            assert kb.check() == []
    finally:
        pg_pool.close(url)


def _once_reachable(read: Callable[[], list[str]]) -> list[str]:
    """`read()` once the database answers again; the deadline only bounds a hang."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        try:
            return read()
        except StorageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _writing_backends(url: str) -> int:
    """kbqa's connections inside a transaction that has written something."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kbqa' "
            "AND backend_xid IS NOT NULL"
        ).fetchone()
        return int(row[0]) if row else 0


def test_server_stopped_mid_commit_leaves_nothing_half_written(
    own_server: PostgresServer,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = own_server.create_database()
    kbs_dir = kbs_dir_with_database(tmp_path / "kbs", url)
    big = [random_doc(rng, f"/docs/big{i}.txt", 200) for i in range(3)]
    outcome: list[BaseException | int] = []
    # The sync's first document is written, then the sync waits there, its transaction open,
    # until the server is down: the stop lands mid-commit on any machine.
    written, stopped = threading.Event(), threading.Event()
    insert = PostgresStore.insert_document

    def insert_then_wait(self: PostgresStore, doc: Any, first_rowid: int) -> list[int]:
        rowids = insert(self, doc, first_rowid)
        if not written.is_set():
            written.set()
            assert stopped.wait(HANG_GUARD_S), "the test never stopped the server"
        return rowids

    try:
        with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=DIM) as kb:
            kb.sync([random_doc(rng, "/docs/0.txt", 3)], [])

            def ingest() -> None:
                try:
                    outcome.append(kb.sync(big, ["/docs/0.txt"]))
                except BaseException as exc:  # handed to the test's thread
                    outcome.append(exc)

            monkeypatch.setattr(PostgresStore, "insert_document", insert_then_wait)
            writer = threading.Thread(target=ingest)
            writer.start()
            assert written.wait(HANG_GUARD_S), "the sync wrote nothing"
            assert _writing_backends(url) == 1  # its transaction is open, with rows in it
            own_server.stop("immediate")
            stopped.set()
            writer.join(timeout=HANG_GUARD_S)
            (failed,) = outcome
            assert isinstance(failed, StorageError) and "PostgreSQL at" in str(failed)
            assert "\n" not in str(failed)
            own_server.start()
            assert [d.source for d in kb.documents()] == ["0.txt"]  # the old state, whole
            assert kb.check() == []
            assert kb.sync(big[:2], []) == 400  # work resumes
    finally:
        pg_pool.close(url)
