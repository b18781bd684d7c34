"""The names a question asks about (kbqa.question_names) and what an absent one costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.ingest.pipeline import ingest_paths
from kbqa.question_names import Names, question_names
from kbqa.relevance import ABSENT_NAME_FACTOR, lexical_score, relevance, relevance_of
from kbqa.retrieval import Retriever
from kbqa.settings import load_settings
from kbqa.storage.types import SearchHit


def hit(text: str, source: str = "readme.md") -> SearchHit:
    return SearchHit("c1", "d1", text, source, None, None, 0.0)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        # English: a word with a capital inside the sentence is a name for English text (a
        # Chinese one may translate it); camel case and code are names for any text.
        ("Does HTTPX support HTTP/3 over QUIC?", Names(latin=frozenset({"httpx", "http", "quic"}))),
        ("Which is faster, Uvicorn or Daphne?", Names(latin=frozenset({"uvicorn", "daphne"}))),
        ("Is HanLP more accurate than jieba?", Names(anywhere=frozenset({"hanlp"}))),
        ("How many entries does dict.txt hold?", Names(anywhere=frozenset({"dict.txt"}))),
        ("How many worker processes does uvicorn start?", Names()),
        ("Is it fast? Daphne is.", Names()),  # the first word of a sentence
        ("What is its default value, i.e. the first one?", Names()),
        ("What is the least GPU memory to P-Tune it?", Names(latin=frozenset({"gpu", "p-tune"}))),
        # Chinese: a Latin word with a capital or code, not the unit of a number (24GB) nor a
        # lower-case word (token: a Chinese text may say 词元); a person; a language.
        (
            "Debian 默认的 /etc/login.defs 里 UID_MIN 设的是多少？",
            Names(anywhere=frozenset({"debian", "login.defs", "uid_min"})),
        ),
        ("怎样用 jieba 给日语文本分词？", Names(chinese=frozenset({"日语"}))),
        ("Qwen-14B 预训练一共用了多少 token？", Names()),
        ("在两张 24GB 显卡上微调 Qwen-7B 要多久？", Names()),
        ("李白最有名的诗是哪一首？", Names(chinese=frozenset({"李白"}))),
        # jieba tags these as places or transliterated names; they are common words.
        ("用 useradd 新建用户时，用户名长度的上限是多少？", Names()),
        ("以 8 比特量化运行要多少显存？", Names()),
    ],
)
def test_the_names_of_a_question(question: str, expected: Names) -> None:
    assert question_names(question) == expected


def test_a_name_no_chunk_of_the_document_holds_costs_half() -> None:
    question = "Does HTTPX support the QUIC protocol?"
    chunk = hit("HTTPX is an HTTP client; its protocol support covers HTTP/1.1 and HTTP/2.")
    lexical = lexical_score(question, chunk)
    assert relevance(question, chunk) == pytest.approx(lexical * ABSENT_NAME_FACTOR)
    assert relevance(question, chunk) < 0.45 < lexical  # retrieval.min_relevance's default
    # Named by another chunk of the same document: the subject is there, no cost.
    assert relevance(question, chunk, named_nearby=frozenset({"quic"})) == lexical


def test_a_name_is_asked_only_of_text_that_would_write_it() -> None:
    # A Chinese text may translate "Japanese" (日语): a capitalised English word is asked of
    # text without Chinese only, a Chinese name of text with Chinese only.
    english = "Which server uses less memory, Uvicorn or Daphne?"
    every_name = question_names(english).all()
    zh = hit("Uvicorn 是 ASGI 服务器，内存占用 60 MB。")
    assert relevance(english, zh) == relevance(english, zh, named_nearby=every_name)
    en = hit("Uvicorn is an ASGI server; it uses 60 MB of memory.")
    assert relevance(english, en) == pytest.approx(
        relevance(english, en, named_nearby=every_name) * ABSENT_NAME_FACTOR
    )
    chinese = "怎样用 jieba 给日语文本分词？"
    no_chinese = hit("jieba segments text: jieba.cut(text).")
    assert relevance(chinese, no_chinese) == lexical_score(chinese, no_chinese)
    with_chinese = hit("jieba 支持对中文文本分词。")
    assert relevance(chinese, with_chinese) == pytest.approx(
        lexical_score(chinese, with_chinese) * ABSENT_NAME_FACTOR
    )


def test_a_name_in_another_form_is_the_same_name() -> None:
    question = "What is the least GPU memory to P-Tune ChatGLM2-6B?"
    chunk = hit("P-Tuning v2 of ChatGLM2-6B needs 7 GB of GPU memory.")
    assert relevance(question, chunk) == lexical_score(question, chunk)


def _write_jieba_readme(docs: Path) -> None:
    docs.mkdir()
    sections = [
        "# jieba 中文分词\n\n支持三种分词模式：精确模式、全模式和搜索引擎模式。"
        "支持繁体分词和自定义词典。",
        "## 安装\n\n使用 pip install jieba 安装，或者下载源码后运行 python setup.py install。",
        "## 用法\n\njieba.cut 方法接受需要分词的文本，返回一个可迭代的生成器。" * 4,
        "## 词性标注\n\njieba.posseg 给分出的每个词标注词性，采用和 ictclas 兼容的标记法。" * 4,
    ]
    (docs / "README.md").write_text("\n\n".join(sections) + "\n", encoding="utf-8")


def test_retrieval_refuses_a_question_about_what_the_document_never_names(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    _write_jieba_readme(docs)
    settings = load_settings(home=tmp_path / "home")
    assert not ingest_paths(settings, "jieba", [docs]).failed
    with Retriever(settings) as retriever:
        asked = retriever.search("怎样用 jieba 给日语文本分词？", ["jieba"], 5)
        known = retriever.search("怎样用 jieba 给繁体文本分词？", ["jieba"], 5)
    assert relevance_of(asked[0]) < 0.45 <= relevance_of(known[0])
