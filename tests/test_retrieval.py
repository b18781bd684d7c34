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


def test_a_document_the_question_names_is_searched_too(tmp_path: Path) -> None:
    # A Chinese question about an English README: its Chinese words fill the KB-wide
    # candidates with Chinese chunks about the same words, none of them the README's; the
    # question names the README by its file name, so the README is searched as well.
    docs = tmp_path / "docs"
    (docs / "man").mkdir(parents=True)
    for i in range(40):
        (docs / "man" / f"page{i}.md").write_text(
            f"# 环境变量 {i}\n\n报错时想全局关掉彩色输出，应该设置环境变量 MANPAGER{i}。\n"
        )
    # Other text, where Typer and Rich are common words and the man pages' words are rare:
    # keyword search ranks the man pages first.
    (docs / "other.md").write_text(
        "\n\n".join(
            f"## 第 {i} 节\n\n今天天气很好，Typer 和 Rich 去公园散步，看到了 {i} 只小鸟。"
            for i in range(150)
        )
    )
    (docs / "typer.md").write_text(
        "# Typer\n\nIf you want to disable Rich globally, set TYPER_USE_RICH to False.\n"
    )
    settings = settings_for(tmp_path / "home", retrieval={"candidates": 10})
    assert not ingest_paths(settings, "kb", [docs]).failed
    question = "Typer 报错时用 Rich 做彩色输出，想全局关掉应该设置哪个环境变量？"
    with Retriever(settings) as retriever:
        hits = retriever.search(question, ["kb"], 5)
        assert hits[0].source == "typer.md"
        # A question naming no document gets the KB-wide search alone.
        plain = retriever.search("报错时想全局关掉彩色输出应该设置哪个环境变量？", ["kb"], 40)
    assert "typer.md" not in {hit.source for hit in plain}
