"""split_sections and embed_text: boundaries, sizes, overlap, metadata, tables."""

from __future__ import annotations

import itertools
import re

import pytest

from kbqa.ingest.splitter import embed_text, is_mostly_chinese, split_sections
from kbqa.ingest.tables import TableSection
from kbqa.ingest.types import Chunk, Section

ZH = (
    "Aurora 内部知识库是一个本地问答系统。它支持中文和英文文档，可以完全离线运行！"
    "安装前请确认显卡驱动版本不低于 450.80.02；INT4 量化后显存需求约 6 GB。"
    "如果显存不足，可以改用 CPU 模式，但是速度会慢很多……首次启动会建立索引，耗时取决于文档数量。"
    "你想知道更多吗？请阅读《运维手册》。"
)
EN = (
    "Aurora is a local question answering system. It answers from your own documents, "
    "citing its sources! Install it with pip install aurora-kb. The INT4 model needs about "
    "6 GB of GPU memory; the FP16 model needs 13 GB. Version 2.1 adds hybrid search, which "
    "fuses BM25 with dense vectors. Is a GPU required? No, the CPU mode works too."
)
ZH_ENDS = tuple("。！？；…》")
EN_ENDS = (".", "!", "?", ";")


def split(sections: list[Section], size: int = 400, size_zh: int = 60, overlap: int = 0):
    return split_sections(sections, chunk_size=size, chunk_size_zh=size_zh, chunk_overlap=overlap)


def test_chinese_chunks_end_at_sentence_boundaries() -> None:
    chunks = split([Section(ZH)], size_zh=60)
    assert len(chunks) > 2
    assert all(len(c.text) <= 60 for c in chunks)
    assert all(c.text.endswith(ZH_ENDS) for c in chunks)
    assert _same_text(chunks, ZH)


def test_english_chunks_end_at_sentence_boundaries() -> None:
    chunks = split([Section(EN)], size=120)
    assert len(chunks) > 2
    assert all(len(c.text) <= 120 for c in chunks)
    assert all(c.text.endswith(EN_ENDS) for c in chunks)
    assert _same_text(chunks, EN)
    assert not any("2.\n1" in c.text or c.text.startswith("1 adds") for c in chunks)


def test_decimal_points_and_versions_are_not_sentence_ends() -> None:
    text = "驱动版本 450.80.02 已验证。Use python3.9 or 3.11. Then run it."
    chunks = split([Section(text)], size=30, size_zh=30)
    assert any("450.80.02" in c.text for c in chunks)


def test_mixed_language_text() -> None:
    text = (ZH + "\n\n" + EN) * 2
    chunks = split([Section(text)], size=150, size_zh=150)
    assert all(len(c.text) <= 150 for c in chunks)
    assert all(c.text.endswith(ZH_ENDS + EN_ENDS) for c in chunks)
    assert _same_text(chunks, text)


def test_size_depends_on_language() -> None:
    assert is_mostly_chinese(ZH) and is_mostly_chinese("INT4 量化后显存需求约 6 GB")
    assert not is_mostly_chinese(EN) and not is_mostly_chinese("")
    zh_chunks = split([Section(ZH * 3)], size=1000, size_zh=80)
    en_chunks = split([Section(EN * 3)], size=150, size_zh=10)
    assert max(len(c.text) for c in zh_chunks) <= 80 < max(len(c.text) for c in en_chunks) <= 150


def test_paragraphs_are_preferred_cut_points() -> None:
    paragraphs = [f"Paragraph {n} has a first sentence. And a second one here." for n in range(6)]
    chunks = split([Section("\n\n".join(paragraphs))], size=130)
    assert [c.text.count("Paragraph") for c in chunks] == [2, 2, 2]
    assert all(c.text.startswith("Paragraph") for c in chunks)


def test_overlap_carries_whole_tail_sentences() -> None:
    sentences = [f"这是第{n}句话，内容用于测试重叠。" for n in range(12)]
    chunks = split([Section("".join(sentences))], size_zh=60, overlap=20)
    assert len(chunks) > 3
    for previous, current in itertools.pairwise(chunks):
        first = re.match(r"这是第\d+句话，内容用于测试重叠。", current.text)
        assert first is not None, "a chunk starts at a sentence start"
        assert previous.text.endswith(first.group(0)), "it repeats the previous chunk's last one"
    assert all(len(c.text) <= 60 for c in chunks)


def test_overlap_falls_back_to_clauses_in_english() -> None:
    # The tail sentences here are longer than the overlap, so whole clauses are carried.
    chunks = split([Section(EN)], size=120, overlap=40)
    carried = [_carried(prev.text, cur.text) for prev, cur in itertools.pairwise(chunks)]
    assert any(carried)
    for (previous, _), overlap in zip(itertools.pairwise(chunks), carried, strict=True):
        if overlap:
            assert len(overlap) <= 40
            before = previous.text[: -len(overlap)].rstrip()
            assert before.endswith((",", ".", "!", "?", ";")), "starts at a clause or sentence"


def test_no_overlap_without_setting() -> None:
    chunks = split([Section(ZH * 2)], size_zh=60, overlap=0)
    assert _same_text(chunks, ZH * 2)


def test_heading_and_page_carried_and_positions_increase() -> None:
    sections = [
        Section(ZH, page=1, heading="安装 > 环境"),
        Section(EN, page=2, heading=None),
        Section("短文。", page=None, heading="附录"),
    ]
    chunks = split(sections, size=120, size_zh=60)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    by_section = {(c.page, c.heading) for c in chunks}
    assert by_section == {(1, "安装 > 环境"), (2, None), (None, "附录")}
    assert chunks[-1] == Chunk("短文。", None, "附录", len(chunks) - 1)


def test_no_empty_chunks() -> None:
    sections = [Section("  \n\n \n"), Section("A.\n\n\n\n   \n\nB."), Section("")]
    chunks = split(sections, size=5)
    assert [c.text for c in chunks] == ["A.", "B."]


def test_long_text_without_boundaries_is_cut_to_size() -> None:
    word_soup = " ".join(["token"] * 200)
    chunks = split([Section(word_soup), Section("中" * 500)], size=100, size_zh=100)
    assert all(0 < len(c.text) <= 100 for c in chunks)
    assert all(set(c.text.split()) == {"token"} for c in chunks if "token" in c.text)
    assert "".join(c.text for c in chunks if "中" in c.text) == "中" * 500


def test_fenced_code_block_kept_whole() -> None:
    code = "```python\nimport aurora\n\nclient = aurora.Client()\nclient.ask('hi')\n```"
    text = "Intro sentence here.\n\n" + code + "\n\nAfter the code block."
    chunks = split([Section(text)], size=90)
    assert any(code in c.text for c in chunks)


def test_table_rows_kept_whole_with_headers() -> None:
    rows = [f"型号: Aurora-{n}; 显存: {n} GB; 说明: 第{n}个型号" for n in range(20)]
    chunks = split([TableSection("\n".join(rows), heading="规格")], size_zh=80, overlap=30)
    lines = [line for c in chunks for line in c.text.split("\n")]
    assert lines == rows, "every row whole, in order, none repeated"
    assert all(c.heading == "规格" and len(c.text) <= 80 for c in chunks)
    assert len(chunks) > 5


def test_row_over_the_size_is_split_on_its_fields() -> None:
    long_row = "; ".join(f"column{n}: value number {n}" for n in range(20))
    chunks = split([TableSection(f"a: 1; b: 2\n{long_row}\nc: 3")], size=100)
    assert chunks[0].text == "a: 1; b: 2"
    assert chunks[-1].text == "c: 3"
    middle = chunks[1:-1]
    assert len(middle) > 1 and all(len(c.text) <= 100 for c in middle)
    assert all(re.fullmatch(r"(column\d+: value number \d+;? ?)+", c.text) for c in middle)


def test_deterministic() -> None:
    sections = [Section(ZH * 3, heading="A"), Section(EN * 3, page=3)]
    assert split(sections, size=150, overlap=30) == split(sections, size=150, overlap=30)


@pytest.mark.parametrize("bad", [{"chunk_size": 0}, {"chunk_size_zh": 0}, {"chunk_overlap": -1}])
def test_invalid_sizes(bad: dict[str, int]) -> None:
    args = {"chunk_size": 100, "chunk_size_zh": 100, "chunk_overlap": 0} | bad
    with pytest.raises(ValueError):
        split_sections([Section("x")], **args)


def test_embed_text_prefixes_file_stem_and_heading() -> None:
    chunk = Chunk("INT4 量化后显存需求约 6 GB。", None, "安装指南 > 硬件要求", 0)
    assert embed_text(chunk, "docs/aurora_install.md") == (
        "aurora_install > 安装指南 > 硬件要求\nINT4 量化后显存需求约 6 GB。"
    )
    plain = Chunk("text", 3, None, 1)
    assert embed_text(plain, "report.pdf") == "report\ntext"


def _same_text(chunks: list[Chunk], original: str) -> bool:
    """Without overlap, the chunks hold exactly the original's non-space characters."""
    return "".join("".join(c.text.split()) for c in chunks) == "".join(original.split())


def _carried(previous: str, current: str) -> str:
    """The longest tail of `previous` that `current` starts with."""
    for start in range(len(previous)):
        if current.startswith(previous[start:]):
            return previous[start:]
    return ""
