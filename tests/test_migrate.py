"""`kbqa kb migrate`: FAISS ↔ Milvus without re-embedding, answers unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kbqa.cli import app
from kbqa.kb_admin import migrate_kb
from kbqa.settings import Settings, load_settings
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.types import ChunkRecord, DocumentUpsert

DIM = 24
WORDS = ["显存", "驱动", "量化", "知识库", "python3.9", "CUDA", "driver", "install"]
WORDS += ["answer", "source", "model", "GPU"]
QUERIES = ["显存 量化", "driver install", "知识库", "python3.9", "", "GPU model answer"]


@pytest.fixture(scope="module")
def milvus_lite() -> None:
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed")


@pytest.fixture
def settings(tmp_path: Path, milvus_lite: None) -> Settings:
    return load_settings(home=tmp_path / "home")


@pytest.fixture
def source(settings: Settings) -> Iterator[KnowledgeBase]:
    rng = np.random.default_rng(11)
    docs = []
    for d in range(12):
        chunks = [
            ChunkRecord(
                text=" ".join(rng.choice(WORDS, 6)) + f" doc{d} part{j}",
                page=j if d % 2 else None,
                heading=f"H{d} > {j}" if d % 3 == 0 else None,
                position=j,
                embed_text=f"doc{d}.md " + " ".join(rng.choice(WORDS, 6)),
                metadata={"lang": "zh" if d % 2 else "en"},
            )
            for j in range(int(rng.integers(1, 8)))
        ]
        vectors = rng.normal(size=(len(chunks), DIM)).astype(np.float32)
        docs.append(
            DocumentUpsert(
                path=f"/corpus/sub{d % 3}/doc{d}.md",
                root="/corpus",
                source=f"sub{d % 3}/doc{d}.md",
                content_hash=f"hash{d}",
                size=100 + d,
                mtime=1_700_000_000.0 + d,
                chunks=chunks,
                vectors=vectors,
            )
        )
    # An exact copy under another name: equal scores that must break the same way everywhere.
    docs.append(replace(docs[3], path="/corpus/copy/doc3.md", source="copy/doc3.md"))
    with KnowledgeBase.create(settings.kbs_dir, "src", embedding="fake-model", dim=DIM) as kb:
        kb.sync(docs, [])
        kb.remove_documents(["/corpus/sub1/doc4.md"])  # ids with a gap, as after real use
        yield kb


def _exported(kb: KnowledgeBase) -> list[DocumentUpsert]:
    return sorted(kb.iter_documents_with_vectors(), key=lambda d: d.path)


def _assert_same_content(a: KnowledgeBase, b: KnowledgeBase) -> None:
    left, right = _exported(a), _exported(b)
    assert [d.path for d in left] == [d.path for d in right] and len(left) >= 10
    for x, y in zip(left, right, strict=True):
        assert (x.doc_id, x.root, x.source, x.content_hash, x.size, x.mtime) == (
            y.doc_id,
            y.root,
            y.source,
            y.content_hash,
            y.size,
            y.mtime,
        )
        assert x.chunks == y.chunks  # ids, texts, pages, headings, metadata
        assert np.array_equal(x.vectors, y.vectors)  # bit for bit: nothing was re-embedded
    assert (a.info().embedding, a.info().dim) == (b.info().embedding, b.info().dim)


def _assert_same_answers(a: KnowledgeBase, b: KnowledgeBase) -> None:
    rng = np.random.default_rng(5)
    for text, vector in zip(QUERIES, rng.normal(size=(len(QUERIES), DIM)), strict=True):
        for sources in (None, ["sub0/doc3.md", "/corpus/sub2/doc5.md", "copy/doc3.md"]):
            left = a.search(vector, text, 8, sources=sources)
            right = b.search(vector, text, 8, sources=sources)
            assert left, (text, sources)
            assert [h.chunk_id for h in left] == [h.chunk_id for h in right]
            assert [h.score for h in left] == pytest.approx([h.score for h in right], abs=1e-6)


def test_faiss_to_milvus_and_back(settings: Settings, source: KnowledgeBase) -> None:
    result = migrate_kb(settings, "src", "on-milvus", "milvus")
    assert result == {
        "from": "src",
        "to": "on-milvus",
        "backend": "milvus",
        "documents": 12,
        "chunks": source.info().chunks,
    }
    with KnowledgeBase.open(settings.kbs_dir, "on-milvus") as milvus:
        assert milvus.info().backend == "milvus"
        _assert_same_content(source, milvus)
        _assert_same_answers(source, milvus)
        assert milvus.check() == []

    migrate_kb(settings, "on-milvus", "back", "faiss")
    with KnowledgeBase.open(settings.kbs_dir, "back") as back:
        assert back.info().backend == "faiss"
        _assert_same_content(source, back)
        _assert_same_answers(source, back)
        assert back.check() == []


def test_migrated_kb_keeps_syncing(settings: Settings, source: KnowledgeBase) -> None:
    migrate_kb(settings, "src", "m", "milvus")
    with KnowledgeBase.open(settings.kbs_dir, "m") as milvus:
        # The same incremental change applied to both keeps them equal.
        for kb in (source, milvus):
            kb.remove_documents(["/corpus/sub0/doc0.md"])
            kb.sync([next(d for d in _exported(source) if d.source == "sub2/doc2.md")], [])
        _assert_same_content(source, milvus)
        _assert_same_answers(source, milvus)


def test_cli_migrate(settings: Settings, source: KnowledgeBase) -> None:
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    result = runner.invoke(
        app, [*home, "kb", "migrate", "--kb", "src", "--to", "dst", "--backend", "milvus", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["chunks"] == source.info().chunks
    listed = runner.invoke(app, [*home, "kb", "list", "--json"])
    backends = {kb["name"]: kb["backend"] for kb in json.loads(listed.stdout)["kbs"]}
    assert backends == {"src": "faiss", "dst": "milvus"}

    again = runner.invoke(
        app, [*home, "kb", "migrate", "--kb", "src", "--to", "dst", "--backend", "milvus"]
    )
    assert again.exit_code == 2 and again.stderr.count("\n") == 1
    assert "already exists" in again.stderr
    assert runner.invoke(app, [*home, "kb", "check", "--kb", "dst"]).exit_code == 0
    deleted = runner.invoke(app, [*home, "kb", "delete", "dst", "--yes"])
    assert deleted.exit_code == 0, deleted.stderr
    assert KnowledgeBase.list_names(settings.kbs_dir) == ["src"]


def _stored_rows(kb: KnowledgeBase) -> list[tuple[object, ...]]:
    """Every chunk row as stored (ids, texts, metadata, vector bytes, checksum), by rowid."""
    with kb._reading():
        return list(kb._store.chunk_rows())


def test_to_postgresql_and_back_bit_for_bit(
    settings: Settings, source: KnowledgeBase, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    home = ["--home", str(settings.home)]
    to_pg = runner.invoke(
        app, [*home, "kb", "migrate", "--kb", "src", "--to-database", postgres_url, "--json"]
    )
    assert to_pg.exit_code == 0, to_pg.stderr
    copied = json.loads(to_pg.stdout)
    assert (copied["to"], copied["database"]) == ("src", postgres_url)
    assert copied["chunks"] == source.info().chunks

    # The same home configured for the database: `src` is now the PostgreSQL copy.
    monkeypatch.setenv("KBQA_STORAGE__DATABASE", postgres_url)
    shared = load_settings(home=settings.home)
    with KnowledgeBase.open(shared.kbs_dir, "src") as on_pg:
        assert on_pg._store.kind == "postgresql"
        assert _stored_rows(on_pg) == _stored_rows(source)
        _assert_same_content(source, on_pg)
        _assert_same_answers(source, on_pg)
        assert on_pg.check() == []
    back = runner.invoke(
        app, [*home, "kb", "migrate", "--kb", "src", "--to", "back", "--to-database", "sqlite"]
    )
    assert back.exit_code == 0, back.stderr
    with KnowledgeBase.open(settings.kbs_dir, "back") as returned:
        assert returned._store.kind == "sqlite"
        assert _stored_rows(returned) == _stored_rows(source)
        _assert_same_answers(source, returned)
        assert returned.check() == []

    wrong = runner.invoke(
        app, [*home, "kb", "migrate", "--kb", "src", "--to-database", "mysql://x"]
    )
    assert wrong.exit_code == 2 and "postgresql://" in wrong.stderr
