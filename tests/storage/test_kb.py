from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import DIM, KBsAt, make_doc, random_doc, unit_vectors

from kbqa.storage.config import check_kb
from kbqa.storage.errors import (
    EmbeddingMismatch,
    InvalidKBName,
    KBBusy,
    KBDamaged,
    KBExists,
    KBNotFound,
    StorageError,
)
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.types import ChunkRecord


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_create_open_list_delete(kbs_dir: Path) -> None:
    assert KnowledgeBase.list_names(kbs_dir) == []
    KnowledgeBase.create(kbs_dir, "知识库_1", embedding="bge", dim=DIM).close()
    KnowledgeBase.create(kbs_dir, "alpha", embedding="minilm", dim=8).close()
    assert KnowledgeBase.list_names(kbs_dir) == ["alpha", "知识库_1"]
    with KnowledgeBase.open(kbs_dir, "知识库_1") as kb:
        info = kb.info()
        assert (info.name, info.embedding, info.dim, info.backend) == (
            "知识库_1",
            "bge",
            DIM,
            "faiss",
        )
        assert (info.documents, info.chunks) == (0, 0)
        assert kb.path == kbs_dir / "知识库_1"
        assert kb.check() == []
    KnowledgeBase.delete(kbs_dir, "知识库_1")
    assert KnowledgeBase.list_names(kbs_dir) == ["alpha"]
    assert [p.name for p in kbs_dir.iterdir()] == ["alpha"]  # no staging/deleted leftovers


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_leftovers_of_killed_create_and_delete_are_swept(kbs_dir: Path) -> None:
    import os

    kbs_dir.mkdir()
    old, fresh = kbs_dir / ".creating-old", kbs_dir / ".deleting-fresh"
    for leftover in (old, fresh):
        (leftover / "sub").mkdir(parents=True)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4).close()
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a running process
    assert KnowledgeBase.list_names(kbs_dir) == ["a"]


def test_create_existing_open_missing_delete_missing(kbs_dir: Path) -> None:
    KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4).close()
    with pytest.raises(KBExists):
        KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4)
    with pytest.raises(KBNotFound):
        KnowledgeBase.open(kbs_dir, "b")
    with pytest.raises(KBNotFound):
        KnowledgeBase.delete(kbs_dir, "b")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_invalid_names_refused_everywhere(kbs_dir: Path, name: str) -> None:
    with pytest.raises(InvalidKBName):
        KnowledgeBase.create(kbs_dir, name, embedding="m", dim=4)
    with pytest.raises(InvalidKBName):
        KnowledgeBase.open(kbs_dir, name)
    with pytest.raises(InvalidKBName):
        KnowledgeBase.delete(kbs_dir, name)
    assert not (kbs_dir.parent / "x").exists()


def test_unknown_backend_and_index_mode_refused(kbs_dir: Path) -> None:
    with pytest.raises(StorageError):
        KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4, backend="nosuch")
    with pytest.raises(ValueError):
        KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4, index="ivf")
    assert KnowledgeBase.list_names(kbs_dir) == []


def test_sync_add_replace_remove(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    a, b = random_doc(rng, "/docs/a.txt", 3), random_doc(rng, "/docs/sub/b.md", 2)
    assert kb.sync([a, b], []) == 5
    docs = {d.path: d for d in kb.documents()}
    assert {p: (d.source, d.chunks) for p, d in docs.items()} == {
        "/docs/a.txt": ("a.txt", 3),
        "/docs/sub/b.md": ("sub/b.md", 2),
    }
    old_chunks = [h.chunk_id for h in kb.search(a.vectors[0], "", 10)]
    assert len(old_chunks) == 5

    a2 = random_doc(rng, "/docs/a.txt", 1, tag="v2")
    assert kb.sync([a2], ["/docs/sub/b.md"]) == 1
    (only,) = kb.documents()
    assert (only.path, only.chunks, only.content_hash) == ("/docs/a.txt", 1, "v2")
    assert kb.get_chunks(old_chunks) == []  # replaced and removed chunk ids are gone
    hits = kb.search(a2.vectors[0], "", 10)
    assert [h.text for h in hits] == [a2.chunks[0].text]
    assert kb.check() == []


@pytest.mark.backends("faiss")  # looks at the FAISS files
def test_empty_sync_does_not_bump_generation(kb: KnowledgeBase) -> None:
    assert kb.sync([], ["/not/there"]) == 0
    assert sorted(p.name for p in kb.path.glob("index.*.faiss")) == ["index.0.faiss"]


def test_remove_documents_by_id_or_path(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    kb.sync([random_doc(rng, f"/docs/{i}.txt", 2) for i in range(4)], [])
    docs = kb.documents()
    assert kb.remove_documents([docs[0].doc_id, docs[1].path, "nope"]) == 2
    assert [d.path for d in kb.documents()] == [docs[2].path, docs[3].path]
    assert kb.info().chunks == 4


def test_remove_chunks_drops_emptied_documents(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    kb.sync([random_doc(rng, "/docs/a.txt", 2)], [])
    ids = [h.chunk_id for h in kb.search(unit_vectors(rng, 1)[0], "", 5)]
    assert kb.remove_chunks(ids[:1]) == 1
    assert kb.documents()[0].chunks == 1
    assert kb.remove_chunks(ids) == 1
    assert kb.documents() == []
    assert kb.check() == []


def test_get_chunks_keeps_order_and_skips_missing(
    kb: KnowledgeBase, rng: np.random.Generator
) -> None:
    doc = make_doc("/docs/a.txt", ["first", "second"], unit_vectors(rng, 2))
    kb.sync([doc], [])
    by_text = {h.text: h.chunk_id for h in kb.search(doc.vectors[0], "", 2)}
    got = kb.get_chunks([by_text["second"], "missing", by_text["first"]])
    assert [(h.text, h.score, h.source, h.kb) for h in got] == [
        ("second", 0.0, "a.txt", "test"),
        ("first", 0.0, "a.txt", "test"),
    ]


def test_around_gives_each_chunk_with_its_neighbours(
    kb: KnowledgeBase, rng: np.random.Generator
) -> None:
    doc = make_doc("/docs/a.txt", ["one", "two", "three"], unit_vectors(rng, 3))
    kb.sync([doc], [])
    (info,) = kb.documents()
    ids = {h.text: h.chunk_id for h in kb.search(doc.vectors[0], "", 3)}
    found = kb.around(info.doc_id, {ids["one"], ids["three"], "missing"})
    assert set(found) == {ids["one"], ids["three"]}
    first, last = found[ids["one"]], found[ids["three"]]
    assert (first.before, first.chunk.text, first.after and first.after.text) == (
        None,
        "one",
        "two",
    )
    assert (last.before and last.before.text, last.chunk.text, last.after) == ("two", "three", None)
    assert kb.around("no-such-document", {ids["two"]}) == {}


def test_fixed_ids_and_metadata_round_trip(kbs_dir: Path, kb: KnowledgeBase) -> None:
    chunk = ChunkRecord("t", 3, "H > I", 0, "embed t", chunk_id="c1", metadata={"k": [1, "二"]})
    doc = make_doc("/docs/a.txt", ["t"], unit_vectors(np.random.default_rng(0), 1))
    doc = type(doc)(**{**doc.__dict__, "chunks": [chunk], "doc_id": "d1"})
    kb.sync([doc], [])
    (hit,) = kb.get_chunks(["c1"])
    assert (hit.doc_id, hit.page, hit.heading, hit.metadata) == ("d1", 3, "H > I", {"k": [1, "二"]})
    (exported,) = list(kb.iter_documents_with_vectors())
    assert exported.doc_id == "d1" and exported.chunks == [chunk]
    np.testing.assert_allclose(exported.vectors, doc.vectors, rtol=1e-6)
    with KnowledgeBase.create(kbs_dir, "copy", embedding="fake", dim=DIM) as copy:
        assert copy.sync(list(kb.iter_documents_with_vectors()), []) == 1
        assert copy.get_chunks(["c1"])[0].metadata == hit.metadata


def test_wrong_dimension_is_refused(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    with pytest.raises(EmbeddingMismatch):
        kb.sync([random_doc(rng, "/docs/a.txt", 2, dim=DIM + 1)], [])
    with pytest.raises(EmbeddingMismatch):
        kb.search(np.ones(DIM + 1, np.float32), "q", 3)
    assert kb.documents() == []


def test_failed_sync_changes_nothing(kb: KnowledgeBase, rng: np.random.Generator) -> None:
    kb.sync([random_doc(rng, "/docs/a.txt", 2)], [])
    before = kb.documents()
    bad = random_doc(rng, "/docs/b.txt", 2)
    bad.vectors[0, 0] = np.nan
    with pytest.raises(StorageError):
        kb.sync([random_doc(rng, "/docs/c.txt", 1), bad], ["/docs/a.txt"])
    assert kb.documents() == before


def test_closed_kb_refuses_use(kbs_dir: Path) -> None:
    kb = KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4)
    kb.close()
    kb.close()
    with pytest.raises(StorageError):
        kb.documents()


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_write_lock_is_reentrant_and_serialises_processes(
    kb: KnowledgeBase, rng: np.random.Generator
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(kb.path / ".lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(KBBusy), kb.write_lock(timeout=0.2):
            pass
        with pytest.raises(KBBusy):
            KnowledgeBase.delete(kb.path.parent, kb.name)
        assert kb.search(unit_vectors(rng, 1)[0], "x", 1) == []  # readers never wait
    finally:
        holder.kill()
        holder.wait()
    # A killed holder leaves no stale lock.
    with kb.write_lock(timeout=5), kb.write_lock(timeout=0):
        assert kb.sync([random_doc(rng, "/docs/a.txt", 1)], []) == 1


_HOLD_LOCK = """
import fcntl, sys, time
fd = open(sys.argv[1], "a")
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_open_not_a_database(kbs_dir: Path) -> None:
    KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4).close()
    (kbs_dir / "a" / "kb.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KBDamaged):
        KnowledgeBase.open(kbs_dir, "a")
    assert check_kb(KBsAt(kbs_dir), "a") != []


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_open_database_without_schema(kbs_dir: Path) -> None:
    import sqlite3

    (kbs_dir / "a").mkdir(parents=True)
    sqlite3.connect(kbs_dir / "a" / "kb.sqlite").execute(
        "CREATE TABLE other (x)"
    ).connection.commit()
    with pytest.raises(KBDamaged, match="missing"):
        KnowledgeBase.open(kbs_dir, "a")


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_open_with_meta_missing(kbs_dir: Path) -> None:
    import sqlite3

    KnowledgeBase.create(kbs_dir, "a", embedding="m", dim=4).close()
    with sqlite3.connect(kbs_dir / "a" / "kb.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'dim'")
    with pytest.raises(KBDamaged, match="dim"):
        KnowledgeBase.open(kbs_dir, "a")


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_directory_without_database(kbs_dir: Path) -> None:
    (kbs_dir / "a").mkdir(parents=True)
    with pytest.raises(KBDamaged):
        KnowledgeBase.open(kbs_dir, "a")
    assert KnowledgeBase.list_names(kbs_dir) == []


@pytest.mark.databases("sqlite")  # the SQLite layout: test_postgres_kb.py
def test_lock_wait_times_out(kb: KnowledgeBase) -> None:
    with kb.write_lock():
        other = KnowledgeBase.open(kb.path.parent, kb.name)
        # A second object in the same process is a separate flock holder: it must wait, and,
        # the lock never coming free, give up with KBBusy (a wait without end would hang here).
        with pytest.raises(KBBusy), other.write_lock(timeout=0.1):
            pass
        other.close()
