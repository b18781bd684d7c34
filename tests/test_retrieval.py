"""Retriever: how many candidates each KB hands over before the merge by relevance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kbqa.ingest.pipeline import ingest_paths
from kbqa.retrieval import Retriever
from kbqa.storage.kb import KnowledgeBase
from tests.answering_support import settings_for


def test_each_kb_hands_over_a_full_candidate_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relevance re-ranks what storage's fusion returns: on the Chinese evaluation corpus
    # (bench/eval_zh.py) the English chunk answering a Chinese question sat at fusion rank
    # 18-24, beyond the 15 hits once asked for with k = 5.
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\nGPU memory figures, part {i}.\n")
    settings = settings_for(tmp_path / "home", retrieval={"candidates": 30})
    assert not ingest_paths(settings, "kb", [docs]).failed
    asked: list[int] = []
    search = KnowledgeBase.search

    def spy(kb: KnowledgeBase, vector: Any, text: str, k: int, **kwargs: Any) -> Any:
        asked.append(k)
        return search(kb, vector, text, k, **kwargs)

    monkeypatch.setattr(KnowledgeBase, "search", spy)
    with Retriever(settings) as retriever:
        hits = retriever.search("GPU memory", ["kb"], 5)
    assert asked == [30]
    assert len(hits) == 3
