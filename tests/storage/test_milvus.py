"""What only the milvus backend has: its collection, stamp, reconciliation and errors.

The shared behaviour (sync, delete, hybrid search, filters, check) is covered by the whole
storage suite, which runs on both backends through the `kb` fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import DIM, KBsAt, make_doc, random_doc, unit_vectors

from kbqa.storage.config import check_kb
from kbqa.storage.errors import KBDamaged, StorageError
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.milvus_client import acquire, default_uri, new_collection_name, release
from kbqa.storage.milvus_collection import Collection
from kbqa.storage.milvus_index import META_KEY, source_filter
from kbqa.storage.types import SearchHit

REPO = Path(__file__).resolve().parents[2]

# Milvus KBs keep their rows in SQLite only.
pytestmark = [pytest.mark.usefixtures("milvus_lite"), pytest.mark.databases("sqlite")]


@pytest.fixture
def mkb(kbs_dir: Path) -> Iterator[KnowledgeBase]:
    with KnowledgeBase.create(kbs_dir, "m", embedding="fake", dim=DIM, backend="milvus") as kb:
        yield kb


@pytest.fixture
def collection(mkb: KnowledgeBase) -> Iterator[Collection]:
    """A second, raw handle on `mkb`'s collection, for tampering with it."""
    uri = default_uri(mkb.path.parent)
    yield Collection(acquire(uri), mkb._meta[META_KEY], DIM, mkb.name)
    release(uri)


def _texts(hits: list[SearchHit]) -> list[str]:
    return [h.text for h in hits]


def test_collection_names_are_valid_and_unique() -> None:
    names = {new_collection_name(n) for n in ("知识库", "a-b.c", "知识库", "x" * 64)}
    assert len(names) == 4
    for name in names:
        assert name.startswith("kbqa_") and len(name) <= 255
        assert all(c.isascii() and (c.isalnum() or c == "_") for c in name)


def test_kb_layout_and_meta(mkb: KnowledgeBase, collection: Collection) -> None:
    assert mkb.info().backend == "milvus"
    assert list(mkb.path.glob("index.*.faiss")) == []  # no FAISS cache for a milvus KB
    assert (mkb.path.parent.parent / "milvus.db").exists()  # the default Milvus Lite file
    assert collection.exists() and collection.stamp() == 0 and collection.stored_dim() == DIM


def test_rows_follow_every_commit(
    mkb: KnowledgeBase, collection: Collection, rng: np.random.Generator
) -> None:
    mkb.sync([random_doc(rng, f"/docs/{i}.txt", 3) for i in range(3)], [])
    mkb.remove_documents(["/docs/1.txt"])
    (chunk,) = mkb.search(unit_vectors(rng, 1)[0], "", 1)
    mkb.remove_chunks([chunk.chunk_id])
    with mkb._reading():
        rowids = sorted(int(r) for r in mkb._store.rowids())
    assert sorted(collection.ids()) == rowids and len(rowids) == 5
    assert collection.stamp() == 3
    assert mkb.check() == []


def test_same_name_in_two_homes_sharing_one_milvus(tmp_path: Path) -> None:
    uri = str(tmp_path / "shared.db")
    rng = np.random.default_rng(0)
    kbs = []
    for home in ("one", "two"):
        kb = KnowledgeBase.create(
            tmp_path / home, "docs", embedding="fake", dim=DIM, backend="milvus", milvus_uri=uri
        )
        kb.sync([make_doc("/d/x.txt", [f"text of {home}"], unit_vectors(rng, 1))], [])
        kbs.append(kb)
    query = unit_vectors(rng, 1)[0]
    assert [_texts(kb.search(query, "", 5)) for kb in kbs] == [["text of one"], ["text of two"]]
    KnowledgeBase.delete(tmp_path / "one", "docs", milvus_uri=uri)
    assert _texts(kbs[1].search(query, "", 5)) == ["text of two"]
    for kb in kbs:
        kb.close()


def test_sources_with_quotes_backslashes_and_cjk(
    mkb: KnowledgeBase, rng: np.random.Generator
) -> None:
    names = ['say "hi".md', "back\\slash.txt", "知识 库.md", "it's.txt"]
    vectors = unit_vectors(rng, len(names))
    docs = [make_doc(f"/docs/{n}", [f"text {i}"], vectors[i : i + 1]) for i, n in enumerate(names)]
    mkb.sync(docs, [])
    for i, name in enumerate(names):
        hits = mkb.search(vectors[(i + 1) % len(names)], "", 4, sources=[name])
        assert [(h.source, h.text) for h in hits] == [(name, f"text {i}")]
        by_path = mkb.search(vectors[0], "", 4, sources=[f"/docs/{name}"])
        assert _texts(by_path) == [f"text {i}"]
    assert source_filter(['a"b']) == 'source in ["a\\"b"] or path in ["a\\"b"]'


def test_commit_whose_milvus_update_fails_is_reconciled_on_next_use(
    mkb: KnowledgeBase, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    mkb.sync([random_doc(rng, "/docs/a.txt", 2)], [])

    def unavailable(*_: object) -> None:
        raise StorageError("Milvus at test: unavailable")

    monkeypatch.setattr(Collection, "insert_from_db", unavailable)
    target = make_doc("/docs/b.txt", ["the new one"], unit_vectors(rng, 1))
    assert mkb.sync([target], ["/docs/a.txt"]) == 1  # SQLite has the commit
    monkeypatch.undo()
    assert _texts(mkb.search(target.vectors[0], "", 5)) == ["the new one"]
    assert mkb.check() == []


def test_writer_killed_between_commit_and_milvus_update(kbs_dir: Path) -> None:
    rng = np.random.default_rng(3)
    with KnowledgeBase.create(kbs_dir, "m", embedding="fake", dim=DIM, backend="milvus") as kb:
        kb.sync([random_doc(rng, f"/docs/{i}.txt", 4) for i in range(3)], [])
    script = textwrap.dedent(
        """
        import os, sys
        import numpy as np
        from pathlib import Path
        from storage_helpers import random_doc
        from kbqa.storage.kb import KnowledgeBase
        from kbqa.storage.milvus_collection import Collection

        Collection.insert_from_db = lambda *args: os._exit(9)  # after the deletes
        kb = KnowledgeBase.open(Path(sys.argv[1]), "m")
        rng = np.random.default_rng(4)
        kb.sync([random_doc(rng, "/docs/new.txt", 5, tag="new")], ["/docs/0.txt"])
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    done = subprocess.run([sys.executable, "-c", script, str(kbs_dir)], env=env, timeout=60)
    assert done.returncode == 9
    with KnowledgeBase.open(kbs_dir, "m") as kb:
        assert {(d.path, d.chunks) for d in kb.documents()} == {
            ("/docs/1.txt", 4),
            ("/docs/2.txt", 4),
            ("/docs/new.txt", 5),
        }
        assert kb.check() == []  # a stale collection is no damage
        hits = kb.search(unit_vectors(rng, 1)[0], "", 20)
        assert len(hits) == 13 and sum(h.source == "new.txt" for h in hits) == 5
        assert kb.check() == []


def test_older_copy_never_takes_the_collection_back_but_its_writes_win(
    kbs_dir: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    uri = default_uri(kbs_dir)
    with KnowledgeBase.create(kbs_dir, "m", embedding="fake", dim=DIM, backend="milvus") as kb:
        kb.sync([random_doc(rng, "/docs/a.txt", 2)], [])
    copies = tmp_path / "restored"
    shutil.copytree(kbs_dir / "m", copies / "m")  # e.g. a backup, or a lagging replica
    with KnowledgeBase.open(kbs_dir, "m") as kb:
        kb.sync([random_doc(rng, "/docs/b.txt", 3)], [])
        collection = Collection(acquire(uri), kb._meta[META_KEY], DIM, kb.name)
    try:
        with KnowledgeBase.open(copies, "m", milvus_uri=uri) as old:
            hits = old.search(unit_vectors(rng, 1)[0], "", 10)
            assert {h.source for h in hits} == {"a.txt"}  # ids it does not know are skipped
            assert collection.stamp() == 2 and len(list(collection.ids())) == 5
            c = random_doc(rng, "/docs/c.txt", 1)
            old.sync([c], [])  # builds on its own state, where id 3 is free again
            assert sorted(collection.ids()) == [1, 2, 3]  # id 3 now holds c.txt's chunk
            assert old.search(c.vectors[0], "", 1)[0].source == "c.txt"
            assert old.check() == []  # vectors compared too: nothing of b.txt is left
    finally:
        release(uri)


def test_dropped_collection_is_rebuilt(
    mkb: KnowledgeBase, collection: Collection, rng: np.random.Generator
) -> None:
    doc = random_doc(rng, "/docs/a.txt", 6)
    mkb.sync([doc], [])
    collection.drop()
    with KnowledgeBase.open(mkb.path.parent, mkb.name) as reopened:
        assert reopened.search(doc.vectors[2], "", 1)[0].text == doc.chunks[2].text
    assert sorted(collection.ids()) == list(range(1, 7))


def test_check_reports_tampered_collection(
    mkb: KnowledgeBase, collection: Collection, rng: np.random.Generator
) -> None:
    mkb.sync([random_doc(rng, f"/docs/{i}.txt", 3) for i in range(2)], [])
    collection.delete([1, 2])
    blank = {"doc_id": "", "source": "", "path": "", "checksum": ""}
    collection.client.upsert(
        collection.name,
        [
            {"id": 3, "vector": unit_vectors(rng, 1)[0].tolist(), **blank},  # another vector
            {"id": 99, "vector": [0.0] * DIM, **blank},  # no such chunk
        ],
    )
    problems = check_kb(KBsAt(mkb.path.parent), mkb.name)
    name = f"Milvus collection {collection.name}"
    assert problems == [
        f"{name} lacks 2 chunks of the database",
        f"{name} has 1 ids that are not chunks",
        f"{name} has 1 vectors that differ from the database",
    ]


def test_hnsw_and_auto_switch(kbs_dir: Path, rng: np.random.Generator) -> None:
    with KnowledgeBase.create(
        kbs_dir, "m", embedding="fake", dim=DIM, backend="milvus", approximate_threshold=40
    ) as kb:
        uri = default_uri(kbs_dir)
        collection = Collection(acquire(uri), kb._meta[META_KEY], DIM, kb.name)
        try:
            kb.sync([random_doc(rng, f"/docs/{i}.txt", 10) for i in range(3)], [])
            assert collection.kind() == "flat"
            kb.sync([random_doc(rng, f"/docs/{i}.txt", 10) for i in range(3, 6)], [])
            assert collection.kind() == "hnsw"  # 60 chunks: past the threshold
            target = unit_vectors(rng, 1)
            kb.sync([make_doc("/docs/t.txt", ["the target"], target)], [])
            assert kb.search(target[0], "", 1)[0].text == "the target"
            hits = kb.search(target[0], "", 5, sources=["3.txt"])
            assert len(hits) == 5 and {h.source for h in hits} == {"3.txt"}
            kb.remove_documents([f"/docs/{i}.txt" for i in range(6)])
            assert collection.kind() == "flat"
            assert kb.check() == []
        finally:
            release(uri)


def test_milvus_down_is_one_line_and_leaves_nothing(kbs_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(StorageError) as caught:
        KnowledgeBase.create(
            kbs_dir, "m", embedding="fake", dim=DIM, backend="milvus", milvus_uri=uri
        )
    assert uri in str(caught.value) and "\n" not in str(caught.value)
    assert KnowledgeBase.list_names(kbs_dir) == []


def test_open_search_and_delete_when_milvus_is_down(
    mkb: KnowledgeBase, rng: np.random.Generator
) -> None:
    mkb.sync([random_doc(rng, "/docs/a.txt", 2)], [])
    kbs_dir, uri = mkb.path.parent, "http://127.0.0.1:9"
    with KnowledgeBase.open(kbs_dir, mkb.name, milvus_uri=uri) as kb:
        assert kb.info().chunks == 2  # SQLite alone answers this
        with pytest.raises(StorageError, match=r"127\.0\.0\.1:9"):
            kb.search(unit_vectors(rng, 1)[0], "", 3)
        assert any("127.0.0.1:9" in p for p in kb.check())
    with pytest.raises(StorageError):
        KnowledgeBase.delete(kbs_dir, mkb.name, milvus_uri=uri)
    assert KnowledgeBase.list_names(kbs_dir) == [mkb.name]  # kept: its collection would leak


def test_delete_drops_the_collection(mkb: KnowledgeBase, collection: Collection) -> None:
    mkb.close()
    KnowledgeBase.delete(mkb.path.parent, mkb.name)
    assert not collection.exists()


def test_missing_collection_name_is_damage(mkb: KnowledgeBase) -> None:
    import sqlite3

    mkb.close()
    with sqlite3.connect(mkb.path / "kb.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key = ?", (META_KEY,))
    with pytest.raises(KBDamaged, match=META_KEY):
        KnowledgeBase.open(mkb.path.parent, mkb.name)


def test_lite_file_held_by_another_process(tmp_path: Path) -> None:
    uri = str(tmp_path / "held.db")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pymilvus import MilvusClient\n"
            "MilvusClient(sys.argv[1])\nprint('open', flush=True)\ntime.sleep(60)",
            uri,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StorageError) as caught:
            KnowledgeBase.create(
                tmp_path / "kbs", "m", embedding="fake", dim=DIM, backend="milvus", milvus_uri=uri
            )
    finally:
        holder.kill()
        holder.wait()
    message = str(caught.value)
    assert message.startswith(f"cannot open the Milvus Lite file {uri}")
    assert "one process at a time" in message and "\n" not in message
