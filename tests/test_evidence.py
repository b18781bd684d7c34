"""Evidence spans and answer.mode over a real KB (real FAISS + SQLite, the bundled MiniLM)
built from documents written here; scripted chat models give the answers to check."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from kbqa.answer import Answer, Source, TokenEvent
from kbqa.answer_mode import invented_references
from kbqa.chain import REFUSAL, QAChain
from kbqa.evidence import find_evidence, keys
from kbqa.llm.default import DefaultChat
from kbqa.retrieval import Retriever
from kbqa.sentences import split_sentences
from kbqa.settings import Settings, load_settings
from tests.fake_chat import FakeChat
from tests.model_cache import link_models

KB = "facts"
DOCUMENTS = {
    "bridge_zh.md": (
        "# 青石桥\n\n## 历史\n\n青石桥建于 1890 年，全长 72 米，横跨清河。"
        "桥面由本地开采的青石铺成，共有九个桥孔。\n\n"
        "## 维护\n\n大桥每 5 年检修一次，最近一次检修在 2021 年完成。"
        "检修期间桥面只允许行人通过。\n"
    ),
    "ferry_en.md": (
        "# Riverside ferry\n\n"
        "The Riverside ferry crosses the bay every 40 minutes from 6 am to 11 pm.\n"
        "A single ticket costs 3.50 euros; children under 12 travel free.\n\n"
        "## Timetable\n\n"
        "The timetable is published as ferry_timetable.pdf on "
        "https://ferry.example.org/timetable and changes on 1 May each year.\n"
    ),
}
FERRY = "How often does the Riverside ferry cross the bay?"
BRIDGE = "青石桥全长多少米？"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kbqa.ingest.pipeline import ingest_paths

    home = link_models(tmp_path_factory.mktemp("evidence-home"))
    docs = tmp_path_factory.mktemp("evidence-docs")
    for name, text in DOCUMENTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    report = ingest_paths(load_settings(home=home), KB, [docs])
    assert not report.failed
    return home


def chain(home: Path, model: Any, mode: str = "auto") -> QAChain:
    settings: Settings = load_settings(
        home=home,
        overrides={
            "answer": {"mode": mode},
            "llm": {"max_new_tokens": 24},
            "retrieval": {"min_relevance": 0.3},  # what is tested here comes after retrieval
        },
    )
    return QAChain(settings, model, Retriever(settings), condense=False)


def check_offsets(answer: Answer) -> None:
    for source in answer.sources:
        assert source.evidence is not None
        for e in source.evidence:
            assert source.text[e.start : e.end] == e.text and 0.0 <= e.score <= 1.0


def evidence_texts(answer: Answer) -> list[str]:
    return [e.text for s in answer.sources for e in s.evidence or ()]


# -- sentences -----------------------------------------------------------------------------


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


def test_chinese_and_english_sentences_split_at_their_own_punctuation() -> None:
    text = "第一句。第二句！第三句？第四句；Then English. Version 3.9 and v1.2.3 stay, e.g. here!"
    assert sentences(text) == [
        "第一句。",
        "第二句！",
        "第三句？",
        "第四句；",
        "Then English.",
        "Version 3.9 and v1.2.3 stay, e.g. here!",
    ]


def test_a_table_row_as_ingest_writes_it_stays_one_sentence() -> None:
    text = (
        "量化等级: INT8; 最低 GPU 显存（推理）: 8 GB; 最低 GPU 显存（高效参数微调）: 9 GB\n"
        "量化等级: INT4; 最低 GPU 显存（推理）: 6 GB; 最低 GPU 显存（高效参数微调）: 7 GB"
    )
    assert sentences(text) == text.split("\n")


def test_lines_lists_and_headings_split_but_wrapped_paragraphs_do_not() -> None:
    text = (
        "# Title\r\n\r\nA paragraph wrapped\nover two lines.\n- item one\n- item two\n"
        "支持三种模式：\n  1. 精确模式\n-d, --delete\n删除用户密码。"
    )
    assert sentences(text) == [
        "Title",
        "A paragraph wrapped\nover two lines.",
        "item one",
        "item two",
        "支持三种模式：",
        "精确模式",
        "-d, --delete\n删除用户密码。",
    ]


_ALPHABET = st.sampled_from(
    [
        *"ab Z9.。！？；;!?\n\r\t -•#:：",
        *("\r\n", "青", "石", "桥", "😀", "👍🏽", "ﬁ", "Ａ"),
        *("e\u0301", "\u0301"),  # a combining mark, after a letter and alone
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_ALPHABET, max_size=80).map("".join))
def test_sentence_spans_slice_the_text_exactly(text: str) -> None:
    spans = split_sentences(text)
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end <= len(text)
        previous_end = end
        piece = text[start:end]
        assert piece == piece.strip() and re.search(r"[^\W_]", piece)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(_ALPHABET, min_size=1, max_size=60).map("".join), min_size=1, max_size=3),
    st.lists(_ALPHABET, max_size=40).map("".join),
)
def test_evidence_offsets_slice_the_chunk_text_exactly(texts: list[str], answer: str) -> None:
    sources = [
        Source(i, f"c{i}", f"d{i}", f"s{i}.md", None, None, text, 0.5, KB)
        for i, text in enumerate(texts, start=1)
    ]
    found = find_evidence(answer, "青石桥 ab Z9", sources, lambda kb: None, 0.3)
    assert len(found.evidence) == len(sources)
    for source, spans in zip(sources, found.evidence, strict=True):
        for e in spans:
            assert source.text[e.start : e.end] == e.text and e.text
            assert e.basis == found.basis and 0.0 <= e.score <= 1.0


def test_numbers_and_identifiers_are_keys() -> None:
    assert keys("INT4 需要约 5.5 GB，见 chatglm2-6b 的 --port 选项") >= {
        "int4",
        "5.5",
        "chatglm2-6b",
        "--port",
    }


# -- evidence over a real KB ---------------------------------------------------------------


def test_a_supported_answer_gets_the_supporting_sentence(home: Path) -> None:
    model = FakeChat(reply=lambda m: "The ferry crosses every 40 minutes [1].")
    answer = chain(home, model).ask(FERRY, KB)
    assert answer.answer_mode == "generated" and answer.generated is None
    assert answer.answer == "The ferry crosses every 40 minutes [1]."
    assert answer.evidence_basis == "answer"
    check_offsets(answer)
    top = max((e for s in answer.sources for e in s.evidence or ()), key=lambda e: e.score)
    assert "every 40 minutes" in top.text and top.basis == "answer"
    assert answer.to_json()["sources"][0]["evidence"][0]["basis"] == "answer"


def test_a_sentence_lacking_the_answers_number_does_not_support_it(home: Path) -> None:
    model = FakeChat(reply=lambda m: "青石桥全长 95 米。")
    answer = chain(home, model, "generate").ask(BRIDGE, KB)
    assert answer.answer == "青石桥全长 95 米。"  # generate mode keeps it
    assert answer.evidence_basis == "question"  # but nothing supports it
    assert any("72 米" in text for text in evidence_texts(answer))
    check_offsets(answer)


def test_extract_mode_never_calls_the_model(home: Path) -> None:
    answer = chain(home, FakeChat(fail=True), "extract").ask(FERRY, KB)
    assert answer.answer_mode == "extracted" and answer.generated is None
    label, *quotes = answer.answer.splitlines()
    assert label == "Quoted from the documents:"
    assert 1 <= len(quotes) <= 3 and all(re.search(r" \[\d\]$", q) for q in quotes)
    assert "every 40 minutes" in answer.answer
    assert answer.evidence_basis == "question"
    check_offsets(answer)


class SilentDefault(DefaultChat):
    """The bundled model's type (what auto mode looks at) that must not be asked."""

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        raise AssertionError("the bundled model must not be called for a Chinese question")


def test_auto_with_the_bundled_model_extracts_for_a_chinese_question(home: Path) -> None:
    # The model's converted copy from the shared cache: converting the GGUF (~20 s) is
    # tests/llm/test_default.py's subject, not this test's.
    model = SilentDefault(cache_dir=str(home / "cache"), max_new_tokens=24)
    answer = chain(home, model).ask(BRIDGE, KB)
    assert answer.answer_mode == "extracted" and not answer.refused
    assert answer.answer.startswith("以下内容摘自知识库文档：\n")
    assert "72 米" in answer.answer and "[1]" in answer.answer
    check_offsets(answer)


def test_auto_replaces_an_unsupported_answer_and_keeps_it_as_generated(home: Path) -> None:
    model = FakeChat(reply=lambda m: "Penguins migrate south in winter.")
    events = list(chain(home, model).stream(FERRY, KB))
    streamed = "".join(e.text for e in events if isinstance(e, TokenEvent))
    done = events[-1].to_json()
    assert streamed == "Penguins migrate south in winter."  # what streamed stays streamed
    assert done["answer_mode"] == "extracted" and done["generated"] == streamed
    assert (
        done["answer"].startswith("Quoted from the documents:") and "40 minutes" in done["answer"]
    )
    assert done["evidence_basis"] == "question" and done["sources"][0]["evidence"]


@pytest.mark.parametrize(
    "reply",
    [
        "The ferry crosses every 40 minutes, see https://ferry.example.com/schedule [1].",
        "The ferry crosses every 40 minutes; details in riverside_schedule.xlsx [1].",
        "It runs every 40 minutes [1]. 详见 http://github.com/ferry/readme.md",
        "Every 40 minutes (see docs/ferry-faq.md) [1].",
        "1. 1. 1. 1. 1. 1.",
        " ",  # a blank answer (the fake model streams it as one blank token)
    ],
)
def test_no_shown_answer_names_a_url_or_file_missing_from_its_sources(
    home: Path, reply: str
) -> None:
    answer = chain(home, FakeChat(reply=lambda m: reply)).ask(FERRY, KB)
    assert answer.answer_mode == "extracted" and answer.generated == reply.strip()
    assert invented_references(answer.answer, answer.sources) == []
    assert "40 minutes" in answer.answer


def test_references_that_the_sources_hold_are_kept(home: Path) -> None:
    reply = "See ferry_timetable.pdf at https://ferry.example.org/timetable [1]."
    answer = chain(home, FakeChat(reply=lambda m: reply)).ask(
        "Where is the ferry timetable published?", KB
    )
    assert answer.answer_mode == "generated" and answer.answer == reply
    assert answer.evidence_basis == "answer"


def test_cited_source_is_looked_at_first() -> None:
    text = "The bay ferry leaves every 40 minutes."
    sources = [
        Source(1, "a", "d1", "a.md", None, None, text, 0.9, KB),
        Source(2, "b", "d2", "b.md", None, None, text, 0.5, KB),
    ]
    found = find_evidence("It leaves every 40 minutes [2].", "How often?", sources, lambda kb: None)
    assert found.basis == "answer"
    assert [len(spans) for spans in found.evidence] == [0, 1]  # the cited copy, not the first


def test_sources_without_a_sentence_are_not_quoted() -> None:
    from kbqa.answer_mode import extract, review
    from kbqa.settings import AnswerSettings

    sources = [Source(1, "c", "d", "rules.md", None, None, "——— … ———\n* * *", 0.6, KB)]
    assert extract("规则是什么？", "zh", sources, lambda kb: None).answer == ""
    kept = review(
        "What?", "en", "An answer.", sources, lambda kb: None, AnswerSettings(), replaceable=True
    )
    assert kept.answer == "An answer." and kept.mode == "generated" and kept.basis is None


def test_refusals_have_no_evidence(home: Path) -> None:
    answer = chain(home, FakeChat(fail=True)).ask("红烧肉怎么做？", KB)
    assert answer.refused and answer.answer == REFUSAL["zh"]
    data = answer.to_json()
    assert data["evidence_basis"] is None and data["answer_mode"] is None
    assert data["sources"] == []


def test_answer_mode_is_validated_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kbqa.settings import SettingsError

    monkeypatch.setenv("KBQA_ANSWER__MODE", "extract")
    assert load_settings(home=tmp_path).answer.mode == "extract"
    monkeypatch.setenv("KBQA_ANSWER__MODE", "guess")
    with pytest.raises(SettingsError, match=r"answer\.mode"):
        load_settings(home=tmp_path)


def test_the_quote_holds_the_kind_of_value_asked_for() -> None:
    from kbqa.answer_mode import extract
    from kbqa.evidence import rank_for_question

    # The first sentence has every word of the question and no figure.
    text = "INT4 量化后的显存占用情况见下表。INT4 量化时显存需要 5.5 GB。"
    sources = [Source(1, "c", "d", "memory.md", None, None, text, 0.6, KB)]
    question = "INT4 量化后显存占用是多少？"
    best, _ = rank_for_question(question, sources, lambda kb: None)[0]
    assert text[best.start : best.end] == "INT4 量化时显存需要 5.5 GB。"
    assert "5.5 GB" in extract(question, "zh", sources, lambda kb: None).answer


def test_a_sentence_repeated_in_several_sources_is_quoted_once() -> None:
    from kbqa.answer_mode import extract

    repeated = "INT8 量化的模型将 int4 改为 int8。"
    sources = [
        Source(i, f"c{i}", f"d{i}", f"readme{i}.md", None, None, text, 0.6, KB)
        for i, text in enumerate([repeated, repeated, f"{repeated}INT8 版本于 2023/04/16 发布。"])
    ]
    answer = extract("INT8 量化版本是哪天发布的？", "zh", sources, lambda kb: None).answer
    assert answer.count("INT8 量化的模型将") <= 1
    assert "2023/04/16" in answer


def test_html_and_link_markup_is_not_quoted() -> None:
    from kbqa.answer_mode import extract

    banner = (
        '<div align="center"><a href="https://sponsor.example/llama-factory">'
        '<img alt="LLaMA-Factory 网页界面" width="400" src="assets/webui.jpg"></a></div>'
    )  # the question's words, as attribute values
    text = f"{banner}\n\n运行 `llamafactory-cli webui` 即可在浏览器里完成微调。"
    sources = [Source(1, "c", "d", "README.md", None, None, text, 0.6, KB)]
    answer = extract("LLaMA-Factory 的网页界面怎么打开？", "zh", sources, lambda kb: None).answer
    assert "llamafactory-cli webui" in answer and "<" not in answer


def test_a_sentence_is_read_under_its_option_line() -> None:
    from kbqa.answer_mode import extract

    # The default sits two lines under the option it belongs to and never names it.
    text = (
        "-c, --cipher NAME\n使用指定的算法加密文件。\n\n"
        "-r, --rounds ROUNDS\n使用指定的轮数加密文件，轮数越多越慢。\n\n"
        "值 0 表示使用默认的轮数 (7000)。\n\n"
        "-v, --verbose\n显示每个文件的名字。"
    )
    sources = [Source(1, "c", "d", "man/vault.1.md", "选项", None, text, 0.6, KB)]
    question = "vault 用 -r 指定加密轮数时，填 0 会用多少轮？"
    assert "7000" in extract(question, "zh", sources, lambda kb: None).answer


def test_a_sentence_is_read_under_its_heading_and_document() -> None:
    from kbqa.evidence import rank_for_question

    # Both READMEs have the same table row; the question names the project and the benchmark,
    # which only the document's path and the chunk's heading hold.
    row = "Model: Lark-7B; Accuracy: {}"
    sources = [
        Source(
            1,
            "a",
            "d1",
            "zh/heron/README.md",
            None,
            "评测结果 > MMLU",
            row.format("41.20"),
            0.6,
            KB,
        ),
        Source(
            2,
            "b",
            "d2",
            "zh/lark/README.md",
            None,
            "评测结果 > GSM8K",
            row.format("28.05"),
            0.6,
            KB,
        ),
    ]
    best, _ = rank_for_question("Lark 在 GSM8K 上的准确率是多少？", sources, lambda kb: None)[0]
    assert best.position == 1


def test_how_big_asks_for_a_figure() -> None:
    from kbqa.evidence import rank_for_question

    text = (
        "由于 ChatGLM-6B 模型规模较小，且模型受概率随机性因素影响，无法保证输出内容的准确性。"
        "ChatGLM-6B 是一个开源的、支持中英双语的对话语言模型，具有 62 亿参数。"
    )
    sources = [Source(1, "a", "d", "zh/chatglm/README.md", None, None, text, 0.6, KB)]
    best, _ = rank_for_question("ChatGLM-6B 这个模型的参数规模有多大？", sources, lambda kb: None)[
        0
    ]
    assert "62 亿" in text[best.start : best.end]


def test_a_question_about_what_to_install_prefers_a_sentence_that_installs() -> None:
    from kbqa.evidence import rank_for_question

    text = (
        "同时支持词性标注。灰鹭模式使用需安装 heron-lite，`pip install heron-lite==2.3.1`。"
        "目前灰鹭模式支持 kestrel v1.2 及以上版本。"
    )
    sources = [Source(1, "a", "d", "zh/kestrel/README.md", None, None, text, 0.6, KB)]
    question = "想试试 kestrel 的灰鹭模式，得先装哪个包、什么版本？"
    best, _ = rank_for_question(question, sources, lambda kb: None)[0]
    assert "heron-lite==2.3.1" in text[best.start : best.end]


def test_quotes_are_shown_best_first_and_the_first_is_the_top_evidence() -> None:
    from kbqa.answer_mode import extract

    # The same statement in two documents; the more relevant source (retrieval's score) is
    # given second, so the documents' order and the best-first order differ.
    sources = [
        Source(1, "a", "d1", "ferry.md", None, None, "青石渡轮由县里的船工驾驶！", 0.5, KB),
        Source(2, "b", "d2", "bridge.md", None, None, "青石渡轮由县里的船工驾驶。", 0.9, KB),
    ]
    out = extract("青石渡轮由谁驾驶？", "zh", sources, lambda kb: None)
    lines = out.answer.splitlines()[1:]
    assert [line[-3:] for line in lines] == ["[2]", "[1]"]
    top = max((e for s in out.sources for e in s.evidence or ()), key=lambda e: e.score)
    assert lines[0].startswith(top.text)


def test_a_weakly_matching_quote_is_still_its_own_evidence() -> None:
    from kbqa.answer_mode import extract

    # Most of the question's words are nowhere in the source: the quote's score is low, yet
    # what is shown must be highlighted as the evidence it is.
    text = "青石桥横跨清河，桥面由本地开采的青石铺成。\n检修时需要大概 30 名工人，历时 12 天。"
    sources = [Source(1, "c", "d", "bridge.md", None, None, text, 0.6, KB)]
    question = "要是没有起重机的话，在冬天修青石桥大概得准备多少工人？"
    out = extract(question, "zh", sources, lambda kb: None)
    evidence = out.sources[0].evidence or ()
    assert evidence and all(e.score < 0.15 for e in evidence)
    shown = out.answer.splitlines()[1:]
    assert [line.rsplit(" [", 1)[0] for line in shown] == [
        " ".join(e.text.split()) for e in evidence
    ]


VAULT_OPTIONS = (
    "-c, --create\n默认情况下，vault 会更新已有的索引。"
    "此选项强制 vault 删除旧的索引并重新生成，不再尝试更新。\n\n"
    "-q, --quiet\n不显示进度信息。\n\n"
    "万一索引损坏，vault 会在启动时提示，并说明损坏的索引所在的目录。"
)


def test_asked_which_option_the_quote_shows_the_option_it_describes() -> None:
    from kbqa.answer_mode import extract

    # The sentence that says what the option does is its second; the option is on the line
    # above the first. The last sentence matches the question's words as well and names none.
    sources = [Source(1, "c", "d", "man/vault.8.md", "选项", None, VAULT_OPTIONS, 0.6, KB)]
    question = "vault 的索引损坏了，要用哪个选项让它删除旧的索引重新生成？"
    first = extract(question, "zh", sources, lambda kb: None).answer.splitlines()[1]
    assert first.startswith("-c, --create") and "删除旧的索引并重新生成" in first


def test_a_colon_introducing_a_code_block_is_quoted_with_the_block() -> None:
    from kbqa.answer_mode import extract

    text = (
        "推理时需要同时加载原模型以及训练好的前缀，因此需要指定 `evaluate.sh` 中的参数：\n\n"
        "```shell\n--model_name_or_path kestrel/base\n--prefix_checkpoint $CHECKPOINT\n```\n\n"
        "之后运行 `bash evaluate.sh` 即可。"
    )
    sources = [Source(1, "c", "d", "ptuning/README.md", None, None, text, 0.6, KB)]
    question = "推理时用什么参数加载训练好的前缀？"
    assert "--prefix_checkpoint" in extract(question, "zh", sources, lambda kb: None).answer


def test_each_option_of_a_help_text_is_its_own_sentence() -> None:
    text = (
        "可选参数:\n"
        "  -p [DELIM], --pos [DELIM]\n"
        "                        启用词性标注；如果指定 DELIM，词语和词性之间\n"
        "                        用它分隔\n"
        "  -n, --no-hmm          不使用隐含马尔可夫模型\n"
        "  -q, --quiet           不输出载入信息"
    )
    sentences = [text[s:e] for s, e in split_sentences(text)]
    assert sentences[-2] == "-n, --no-hmm          不使用隐含马尔可夫模型"
    assert sentences[-3].endswith("用它分隔") and sentences[-1].startswith("-q, --quiet")


def test_a_word_key_is_found_at_the_end_of_a_hyphenated_option() -> None:
    from kbqa.evidence import Sentence

    line = "-n, --no-hmm 不使用隐含马尔可夫模型"
    assert Sentence.of(0, line, 0, len(line)).has_key("hmm")
    assert not Sentence.of(0, "qwen-7b", 0, 7).has_key("7b")


def test_an_faq_title_is_the_label_of_its_answer_not_the_answer() -> None:
    from kbqa.answer_mode import extract

    # The bold title restates the question word for word; the fix is two paragraphs under it.
    text = (
        "**青鸟引擎启动时提示 `error: port 8731 already in use`**\n\n"
        "这是因为端口已被其他程序占用，此时服务无法启动。\n\n"
        "需要在配置文件里换一个端口：\n\n```toml\nport = 8732\n```\n\n"
        "**青鸟引擎的日志在哪里？**\n\n日志写在 logs 目录下。"
    )
    sources = [Source(1, "c", "d", "faq.md", None, "常见问题", text, 0.6, KB)]
    question = "青鸟引擎启动时提示 port 8731 already in use，要怎么解决？"
    answer = extract(question, "zh", sources, lambda kb: None).answer
    assert "port = 8732" in answer and "日志在哪里" not in answer


def test_a_question_asking_two_things_is_answered_for_each() -> None:
    from kbqa.answer_mode import extract

    text = (
        "渡轮每天早上六点从北码头开出，单程四十分钟。\n\n"
        "船票可以在码头的售票机上购买，也可以在手机应用里购买。\n\n"
        "节假日渡轮照常运行，但班次减半。\n\n渡轮上禁止吸烟。"
    )
    sources = [Source(1, "c", "d", "ferry.md", None, None, text, 0.6, KB)]
    answer = extract(
        "渡轮的船票在哪里购买？节假日还运行吗？", "zh", sources, lambda kb: None
    ).answer
    assert "售票机" in answer and "照常运行" in answer and "吸烟" not in answer


def test_a_question_is_cut_into_at_most_three_parts() -> None:
    from kbqa.evidence import question_parts

    assert question_parts("渡轮几点开？") == [] and question_parts("？？ ？") == []
    assert question_parts("渡轮几点开？周末开吗？") == ["渡轮几点开？", "周末开吗？"]
    assert len(question_parts("渡轮几点开？" * 50)) == 3  # each part is one more scoring pass


def test_a_sentence_announcing_a_method_is_quoted_with_it() -> None:
    from kbqa.answer_mode import extract

    text = (
        "如果您在官方站点的下载中遇到了问题，可以通过下述方法使用镜像站。\n\n"
        "```bash\nexport KESTREL_USE_MIRROR=1\n```\n\n镜像站每天同步一次。"
    )
    sources = [Source(1, "c", "d", "kestrel/README.md", None, "从镜像站下载", text, 0.6, KB)]
    question = "官方站点下载老失败，kestrel 怎么改成从镜像站下载？"
    assert "KESTREL_USE_MIRROR=1" in extract(question, "zh", sources, lambda kb: None).answer


def test_a_short_sentence_ending_the_paragraph_completes_the_best_quote() -> None:
    from kbqa.answer_mode import extract

    # The default is the paragraph's last, short sentence, which shares only "默认" with the
    # question; the next paragraph is not quoted with it.
    text = (
        "其中 `catalog.json` 文件应放置在 `catalog_dir` 目录下。"
        "您可以通过修改 `catalog_dir` 参数来使用其他目录。默认值为 `./catalog`。\n\n"
        "默认情况下每个条目都需要一个名称。"
    )
    sources = [Source(1, "c", "d", "heron/data/README.md", None, None, text, 0.6, KB)]
    first = extract(
        "heron 的 catalog.json 默认要放在哪个目录？", "zh", sources, lambda kb: None
    ).answer.splitlines()[1]
    assert "`./catalog`" in first and "每个条目" not in first


def test_asked_which_option_an_option_named_by_the_question_wins() -> None:
    from kbqa.answer_mode import extract

    # Both sentences name an option the question does not hold; only --no-hmm's own name
    # holds one of its words.
    text = (
        "使用: python -m kestrel [options] filename\n\n"
        "$> python -m kestrel --help\nKestrel command line interface.\n\n"
        "可选参数:\n"
        "  -h, --help            显示此帮助信息并退出\n"
        "  -n, --no-hmm          不使用隐含马尔可夫模型\n"
        "  -q, --quiet           不输出载入信息"
    )
    sources = [Source(1, "c", "d", "kestrel/README.md", None, "命令行分词", text, 0.6, KB)]
    question = "用 python -m kestrel 在命令行分词时，想关掉 HMM 新词发现该加哪个参数？"
    assert "--no-hmm" in extract(question, "zh", sources, lambda kb: None).answer
