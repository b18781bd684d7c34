"""kbqa.storage.config: the one way a KB is opened, created, checked and deleted from settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from storage_helpers import DIM, KBsAt

from kbqa.settings import StorageSettings
from kbqa.storage.config import check_kb, create_kb, delete_kb, open_kb
from kbqa.storage.errors import KBNotFound


def test_a_kb_lives_and_goes_as_configured(kbs_dir: Path) -> None:
    config = KBsAt(kbs_dir, StorageSettings(index="hnsw", approximate_threshold=10))
    with create_kb(config, "notes", embedding="m", dim=DIM) as kb:
        assert kb.info().backend == "faiss"  # storage.backend, as none was asked for
    with open_kb(config, "notes") as kb:
        assert kb.info().embedding == "m"
    assert check_kb(config, "notes") == []
    delete_kb(config, "notes")
    with pytest.raises(KBNotFound):
        open_kb(config, "notes")
    with pytest.raises(KBNotFound):
        check_kb(config, "notes")


@pytest.mark.databases("sqlite")
def test_a_kb_that_cannot_be_opened_is_one_problem(kbs_dir: Path) -> None:
    config = KBsAt(kbs_dir)
    create_kb(config, "notes", embedding="m", dim=DIM).close()
    (kbs_dir / "notes" / "kb.sqlite").unlink()
    assert check_kb(config, "notes") == ["knowledge base notes is damaged: kb.sqlite is missing"]
