"""Quotes from the chunk next to a source (kbqa.neighbours), over a real KB (real FAISS + SQLite,
the bundled MiniLM) built from a document written here: ingest puts a table in its own chunk,
after the chunk whose sentence introduces it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kbqa.answer import DoneEvent, Source, SourcesEvent
from kbqa.chain import QAChain
from kbqa.evidence import Sentence, context_of
from kbqa.neighbours import adjacent_chunks
from kbqa.retrieval import Retriever
from kbqa.settings import Settings, load_settings
from kbqa.storage.types import SearchHit
from tests.fake_chat import FakeChat

KB = "engine"
ENGINE = """# 青鸟引擎

## 简介

青鸟引擎是一个用于生成文本的推理引擎，支持多种模型和量化方式。

## 推理性能

青鸟引擎使用了分组注意力，提高了生成速度。生成 3000 个字符的平均速度对比如下

| 模型 | 推理速度 (字符/秒) |
|---|---|
| 青鸟-1 | 27.31 |
| 青鸟-2 | 52.08 |

> 测试硬件为单张显卡，批大小为 1。

## 许可

代码以 Apache-2.0 协议开源。
"""
QUESTION = "生成 3000 个字符时，青鸟引擎平均每秒能输出多少个字符？"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from kbqa.ingest.pipeline import ingest_paths

    home = tmp_path_factory.mktemp("neighbours-home")
    docs = tmp_path_factory.mktemp("neighbours-docs")
    (docs / "engine.md").write_text(ENGINE, encoding="utf-8")
    settings = load_settings(
        home=home,
        overrides={"answer": {"mode": "extract"}, "retrieval": {"min_relevance": 0.3}},
    )
    assert not ingest_paths(settings, KB, [docs]).failed
    return settings


def test_the_table_after_the_matching_chunk_is_quoted_and_becomes_a_source(
    settings: Settings,
) -> None:
    chain = QAChain(settings, FakeChat(fail=True), Retriever(settings), condense=False)
    events = list(chain.stream(QUESTION, KB, top_k=1))
    announced = next(e for e in events if isinstance(e, SourcesEvent)).sources
    done = next(e for e in events if isinstance(e, DoneEvent))
    assert done.sources is not None and not done.refused
    # Retrieval gave the introduction; the figure is in the next chunk, cited as a new source.
    assert done.sources[0].text.endswith("平均速度对比如下")
    table = done.sources[-1]
    assert "52.08" in done.answer and f"[{table.index}]" in done.answer
    assert table.index == len(done.sources) and "52.08" in table.text
    # The first event announces the same numbered sources (without evidence yet).
    assert [s.chunk_id for s in announced] == [s.chunk_id for s in done.sources]
    assert all(s.evidence is None for s in announced)
    for source in done.sources:
        for e in source.evidence or ():
            assert source.text[e.start : e.end] == e.text


def test_neighbours_are_the_chunks_before_and_after_with_their_leads(settings: Settings) -> None:
    chain = QAChain(settings, FakeChat(fail=True), Retriever(settings), condense=False)
    intro = next(s for s in chain.ask(QUESTION, KB, top_k=1).sources if "对比如下" in s.text)
    nearby = adjacent_chunks(chain.retriever.kb, [intro])
    texts = [s.text for s in nearby.sources]
    assert len(texts) == 2 and "简介" not in texts[0] and "27.31" in texts[1]
    assert all(s.index == 0 and s.doc_id == intro.doc_id for s in nearby.sources)
    table = nearby.sources[1]
    assert nearby.leads[table.chunk_id].endswith("平均速度对比如下")


def test_a_table_row_is_read_under_its_caption_even_in_the_chunk_before() -> None:
    rows = "模型: 青鸟-1; 推理速度 (字符/秒): 27.31\n模型: 青鸟-2; 推理速度 (字符/秒): 52.08"
    source = Source(1, "t", "d", "engine.md", None, "推理性能", rows, 0.6, KB)
    start = rows.index("模型: 青鸟-2")
    lead = "生成 3000 个字符的平均速度对比如下"
    context = context_of(source, start, len(rows), lead)
    assert context.endswith(lead)
    within = replace(source, text=f"{lead}\n{rows}")
    assert context_of(within, within.text.index("模型: 青鸟-2"), len(within.text)).endswith(lead)


def test_a_latin_name_glued_to_chinese_text_is_found() -> None:
    text = "相比原版Qwen-7B，新版用了更多训练数据。"
    assert Sentence.of(0, text, 0, len(text)).has_key("qwen-7b")
    longer = "原版Qwen-7B2发布"
    assert not Sentence.of(0, longer, 0, len(longer)).has_key("qwen-7b")


def test_a_kb_or_document_gone_meanwhile_has_no_neighbours(settings: Settings) -> None:
    gone = Source(1, "c", "no-such-doc", "gone.md", None, None, "文本。", 0.6, KB)
    with Retriever(settings) as retriever:
        assert adjacent_chunks(retriever.kb, [gone]).sources == []
        assert adjacent_chunks(retriever.kb, [replace(gone, kb="no-such-kb")]).sources == []


def test_neighbours_are_read_on_the_retrievers_open_kb(settings: Settings) -> None:
    # One handle per KB for every answer: the neighbours are read through the KB the
    # retriever opened to search, and it stays open for the next question.
    retriever = Retriever(settings)
    chain = QAChain(settings, FakeChat(fail=True), retriever, condense=False)
    chain.ask(QUESTION, KB, top_k=1)
    opened = retriever.kb(KB)
    nearby = adjacent_chunks(retriever.kb, chain.ask(QUESTION, KB, top_k=1).sources)
    assert nearby.sources and retriever.kb(KB) is opened
    assert opened.document(nearby.sources[0].doc_id) is not None  # not closed by the reads
    retriever.close()


def test_a_chinese_question_finds_the_english_words_of_its_terms() -> None:
    from kbqa.evidence import rank_for_question

    text = (
        "Optional dependencies:\n"
        "* `colorama`: to print colored output on Windows terminals.\n"
        "* `watchfiles`: to detect changes of files when reloading."
    )
    sources = [Source(1, "c", "d", "en/server.md", None, "Dependencies", text, 0.6, KB)]
    ranked = rank_for_question("靠哪个依赖库来检测文件的变化？", sources, lambda kb: None)
    best, score = ranked[0]
    assert "watchfiles" in text[best.start : best.end] and score > 0


def test_a_hyphenated_name_matches_its_unhyphenated_spelling() -> None:
    row = "Quantization: Qwen-7B-Chat (Int4); MMLU: 55.1; CEval (val): 59.2"
    assert Sentence.of(0, row, 0, len(row)).has_key("c-eval")


FAQ = """# 青鸟引擎常见问题

青鸟引擎的默认端口可以在配置文件里修改，修改后需要重启服务才会生效。
"""
DEPLOY = """# 部署

启动后，青鸟引擎在 8731 端口上提供服务，可以用浏览器打开。
"""


def test_a_hit_ranked_past_the_sources_is_quoted_and_becomes_a_source(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from kbqa.ingest.pipeline import ingest_paths

    docs = tmp_path_factory.mktemp("further-docs")
    (docs / "faq.md").write_text(FAQ, encoding="utf-8")
    (docs / "deploy.md").write_text(DEPLOY, encoding="utf-8")
    assert not ingest_paths(settings, "notes", [docs]).failed
    chain = QAChain(settings, FakeChat(fail=True), Retriever(settings), condense=False)
    done = chain.ask("青鸟引擎的默认端口是多少？", "notes", top_k=1)
    # Retrieval ranks the FAQ first (it names the engine); the port is in the deployment
    # notes, a hit the model would not have been given, quoted and cited as source [2].
    assert [s.source.rsplit("/", 1)[-1] for s in done.sources] == ["faq.md", "deploy.md"]
    assert "8731" in done.answer and "[2]" in done.answer
    assert "8731" not in done.sources[0].text


def test_a_chinese_question_finds_an_english_option_description() -> None:
    from kbqa.answer_mode import extract

    text = (
        "-l, --lock-secs SEC\nLock account for SEC seconds after failed login.\n\n"
        "-r, --reset\n重置登录失败计数。\n\n"
        "-t, --time DAYS\n显示最近 DAYS 天内的登录失败记录。"
    )
    sources = [Source(1, "c", "d", "man/faillog.8.md", "选项", None, text, 0.6, KB)]
    question = "faillog 要设置登录失败后把账号锁定若干秒，用哪个选项？"
    first = extract(question, "zh", sources, lambda kb: None).answer.splitlines()[1]
    assert "--lock-secs" in first


class _CountingRetriever(Retriever):
    """The real retriever, counting its searches."""

    searches = 0

    def search(self, *args: Any, **kwargs: Any) -> list[SearchHit]:
        self.searches += 1
        return super().search(*args, **kwargs)


def test_a_quoted_answer_searches_once_and_keeps_the_top_k_sources(settings: Settings) -> None:
    retriever = _CountingRetriever(settings)
    chain = QAChain(settings, FakeChat(fail=True), retriever, condense=False)
    done = chain.ask(QUESTION, KB, top_k=1)
    assert retriever.searches == 1
    top = retriever.relevant(retriever.search(QUESTION, [KB], 1))
    assert done.sources[0].chunk_id == top[0].chunk_id
    retriever.close()
