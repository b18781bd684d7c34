"""`check()` on each class of damage, and what open/search do with it."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import DIM, KBsAt, random_doc, unit_vectors

from kbqa.storage.config import check_kb
from kbqa.storage.errors import KBDamaged
from kbqa.storage.kb import KnowledgeBase

# Edits the SQLite file by hand; test_check_postgres.py edits the PostgreSQL rows.
pytestmark = pytest.mark.databases("sqlite")


@pytest.fixture
def built(kbs_dir: Path, rng: np.random.Generator) -> Iterator[Path]:
    """A closed KB at generation 2 with 3 documents; yields its directory."""
    with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=DIM) as kb:
        kb.sync([random_doc(rng, f"/docs/{i}.txt", 4) for i in range(2)], [])
        kb.sync([random_doc(rng, "/docs/2.txt", 4)], [])
        assert kb.check() == []
    yield kbs_dir / "kb"


def _reopen_and_check(kb_dir: Path) -> list[str]:
    with KnowledgeBase.open(kb_dir.parent, kb_dir.name) as kb:
        return kb.check()


def _edit(kb_dir: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(kb_dir / "kb.sqlite") as conn:
        conn.execute(sql, params)


def test_healthy_kb_after_reopen(built: Path) -> None:
    assert _reopen_and_check(built) == []
    assert check_kb(KBsAt(built.parent), "kb") == []


def test_truncated_database(built: Path) -> None:
    db = built / "kb.sqlite"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    problems = check_kb(KBsAt(built.parent), "kb")
    assert problems and all("\n" not in p for p in problems)


def test_database_truncated_to_nothing(built: Path) -> None:
    (built / "kb.sqlite").write_bytes(b"")
    with pytest.raises(KBDamaged):
        KnowledgeBase.open(built.parent, "kb")


def test_deleted_index_file_is_rebuilt_not_damage(built: Path, rng: np.random.Generator) -> None:
    for index_file in built.glob("index.*.faiss"):
        index_file.unlink()
    with KnowledgeBase.open(built.parent, "kb") as kb:
        assert kb.check() == []
        assert len(kb.search(unit_vectors(rng, 1)[0], "chunk", 5)) == 5
    assert (built / "index.2.faiss").exists()
    assert _reopen_and_check(built) == []


def test_hand_edited_chunk_text(built: Path) -> None:
    _edit(built, "UPDATE chunks SET text = 'forged' WHERE id = 3")
    problems = _reopen_and_check(built)
    assert len(problems) == 1 and "checksum" in problems[0]


def test_hand_edited_vector_has_wrong_dimension(built: Path) -> None:
    _edit(
        built, "UPDATE chunks SET vector = ? WHERE id = 1", np.zeros(DIM + 2, np.float32).tobytes()
    )
    problems = _reopen_and_check(built)
    assert any("dimension" in p for p in problems)
    assert any("checksum" in p for p in problems)


def test_meta_dim_edited(built: Path) -> None:
    _edit(built, "UPDATE meta SET value = ? WHERE key = 'dim'", str(DIM * 2))
    problems = _reopen_and_check(built)
    assert any(f"do not have dimension {DIM * 2}" in p for p in problems)
    assert any(f"index file index.2.faiss has dimension {DIM}" in p for p in problems)


def test_corrupt_index_file(built: Path, rng: np.random.Generator) -> None:
    index_file = built / "index.2.faiss"
    data = bytearray(index_file.read_bytes())
    index_file.write_bytes(bytes(data[: len(data) // 3]))
    problems = _reopen_and_check(built)
    assert len(problems) == 1 and "corrupt" in problems[0]
    with KnowledgeBase.open(built.parent, "kb") as kb:  # searches still work from SQLite
        assert len(kb.search(unit_vectors(rng, 1)[0], "", 12)) == 12


def test_garbage_index_file(built: Path) -> None:
    (built / "index.2.faiss").write_bytes(b"\x00" * 4096)
    assert "corrupt" in _reopen_and_check(built)[0]


def test_index_file_of_another_generation(built: Path) -> None:
    shutil.copy(built / "index.1.faiss", built / "index.2.faiss")  # lacks document 2
    problems = _reopen_and_check(built)
    assert problems == ["index file index.2.faiss lacks 4 chunks of the database"]


def test_index_with_extra_ids(built: Path) -> None:
    _edit(
        built,
        "DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE doc_id = "
        "(SELECT doc_id FROM documents WHERE path = '/docs/2.txt'))",
    )
    _edit(
        built,
        "DELETE FROM chunks WHERE doc_id = "
        "(SELECT doc_id FROM documents WHERE path = '/docs/2.txt')",
    )
    problems = _reopen_and_check(built)
    assert problems == ["index file index.2.faiss has 4 ids that are not chunks"]


def test_index_vectors_differ(built: Path, rng: np.random.Generator) -> None:
    from kbqa.storage.vector_index import VectorIndex, read_index, write_index

    index = read_index(built / "index.2.faiss")
    ids = index.ids()
    write_index(built, 2, VectorIndex.build("flat", DIM, ids, unit_vectors(rng, len(ids))))
    assert "differ" in _reopen_and_check(built)[0]


def test_orphan_chunks(built: Path) -> None:
    _edit(built, "DELETE FROM documents WHERE path = '/docs/0.txt'")
    assert _reopen_and_check(built) == ["4 chunks belong to no document"]


def test_keyword_index_out_of_step(built: Path) -> None:
    _edit(built, "DELETE FROM chunks_fts WHERE rowid = 2")
    assert "keyword index" in _reopen_and_check(built)[0]


def test_meta_row_deleted_while_open(built: Path) -> None:
    with KnowledgeBase.open(built.parent, "kb") as kb:
        _edit(built, "DELETE FROM meta WHERE key = 'embedding'")
        assert kb.check() == ["meta key 'embedding' is missing"]
    with pytest.raises(KBDamaged):
        KnowledgeBase.open(built.parent, "kb")


def test_damaged_vectors_make_search_raise_kbdamaged(built: Path, rng: np.random.Generator) -> None:
    _edit(built, "UPDATE chunks SET vector = x'00' WHERE id = 1")
    for index_file in built.glob("index.*.faiss"):
        index_file.unlink()
    with KnowledgeBase.open(built.parent, "kb") as kb, pytest.raises(KBDamaged, match="kb check"):
        kb.search(unit_vectors(rng, 1)[0], "", 3)
