"""Retriever: how many candidates each KB hands over before the merge by relevance, the
documents a question names, and the neighbouring chunks a hit is scored with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kbqa.ingest.pipeline import ingest_paths
from kbqa.relevance import dense_weight, relevance, relevance_of
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


def test_a_hit_is_scored_with_the_chunks_next_to_it(tmp_path: Path) -> None:
    # ChatGLM2-6B's FAQ: an entry's question ends one short Chinese chunk, its answer opens
    # the next. Alone, the chunk with the question lacks the user's OpenMP and cache
    # folder; read with its neighbour, it answers.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "FAQ.md").write_text(
        "# 常见问题\n\n"
        "## Q1\n\n"
        "**Mac直接加载量化后的模型出现提示 `clang: error: unsupported option '-fopenmp'**\n\n"
        "这是由于 Mac 由于本身缺乏 omp 导致的，此时可运行但是单核。需要单独安装 openmp 依赖，"
        "即可在 Mac 下使用 OMP：\n\n```bash\n# 参考`https://mac.r-project.org/openmp/`\n"
        "curl -O https://mac.r-project.org/openmp/openmp-14.0.6-darwin20-Release.tar.gz\n"
        "sudo tar fvxz openmp-14.0.6-darwin20-Release.tar.gz -C /\n```\n\n"
        "此时会安装下面几个文件：`/usr/local/lib/libomp.dylib`, `/usr/local/include/ompt.h`, "
        "`/usr/local/include/omp.h`, `/usr/local/include/omp-tools.h`。\n\n"
        "> 注意：如果你之前运行 `ChatGLM2-6B` 项目失败过，最好清一下 Hugging Face 的缓存，"
        "即默认下运行 `rm -rf ${HOME}/.cache/huggingface/modules/transformers_modules/"
        "chatglm-6b-int4`。由于使用了 `rm` 命令，请明确知道自己在删除什么。\n",
        encoding="utf-8",
    )
    settings = settings_for(tmp_path / "home")
    assert not ingest_paths(settings, "kb", [docs]).failed
    question = (
        "之前在 Mac 上跑 ChatGLM2-6B 量化模型失败过，装好 openmp 以后还要清掉 Hugging Face "
        "缓存里的哪个目录？"
    )
    with Retriever(settings) as retriever:
        chunks = retriever.kb("kb").document(retriever.kb("kb").documents()[0].doc_id)
        hits = retriever.search(question, ["kb"], 5)
    assert chunks is not None and len(chunks[1]) > 1  # the entry spans chunks
    best = hits[0]
    alone = relevance(question, best, weight=dense_weight(question, "default"))
    assert relevance_of(best) > alone
    assert relevance_of(best) >= 0.45


def test_neighbours_are_read_for_chinese_questions_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # English chunks are long and an English question leans on the cosine: joined with their
    # neighbours, other documents' chunks only outranked the answer (bench/eval_retrieval.py).
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text(
        "# Notes\n\nThe cache lives in ~/.cache/kbqa.\n\n## 缓存\n\n缓存目录在 ~/.cache/kbqa。\n"
    )
    settings = settings_for(tmp_path / "home")
    assert not ingest_paths(settings, "kb", [docs]).failed
    read: list[str] = []
    document = KnowledgeBase.document

    def spy(kb: KnowledgeBase, doc_id: str) -> Any:
        read.append(doc_id)
        return document(kb, doc_id)

    monkeypatch.setattr(KnowledgeBase, "document", spy)
    with Retriever(settings) as retriever:
        assert retriever.search("Where does the cache live?", ["kb"], 5)
        assert read == []
        assert retriever.search("缓存目录在哪里？", ["kb"], 5)
    assert len(read) == 1  # the one document, read once for all its candidates
