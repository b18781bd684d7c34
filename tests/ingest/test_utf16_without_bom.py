"""UTF-16 without a byte-order mark is read as text; binary, GBK and UTF-8 are never taken for it.

Windows tools and some Chinese editors write BOM-less UTF-16; it used to be refused as binary.
"""

from __future__ import annotations

import io
import json
import random
import zipfile

import pytest
from ingest_documents import docx_bytes, error_of, load, pdf_bytes

from kbqa.ingest.loaders import read_text
from kbqa.ingest.loaders.encoding import bomless_utf16
from kbqa.ingest.splitter import split_sections
from kbqa.ingest.tables import TableSection
from kbqa.ingest.types import Chunk, LoadError, Section

ENGLISH = (
    "Aurora is a local question answering system.\n"
    "It answers from your own documents and cites its sources.\n"
    "The INT4 model needs about 6 GB of GPU memory."
)
CHINESE = (
    "内部知识库是一个本地问答系统。它支持中文和英文文档，可以完全离线运行！\n"
    "如果显存不足，可以改用处理器模式，但是速度会慢很多。\n"
    "首次启动会建立索引，耗时取决于文档数量。你想知道更多吗？请阅读《运维手册》。"
)
MIXED = "Aurora 内部知识库安装指南：INT4 量化后显存需求约 6 GB，驱动不低于 450.80.02。\n第二行。"
# No ASCII at all, so its UTF-16 has no zero bytes: only the decoded text can tell.
CJK_ONLY = "安装前请确认显卡驱动版本不低于要求；量化后显存需求约六吉字节。"
TEXTS = {"english": ENGLISH, "chinese": CHINESE, "mixed": MIXED, "cjk-only": CJK_ONLY}
CODECS = ["utf-16-le", "utf-16-be"]


def chunks(sections: list[Section]) -> list[Chunk]:
    return split_sections(sections, chunk_size=4000, chunk_size_zh=4000, chunk_overlap=0)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", TEXTS)
def test_txt(write, codec: str, name: str) -> None:
    text = TEXTS[name]
    data = text.encode(codec)
    assert not data.startswith((b"\xff\xfe", b"\xfe\xff"))
    sections = load(write("notes.txt", data))
    assert sections == [Section(text)]
    assert [chunk.text for chunk in chunks(sections)] == [text]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", TEXTS)
def test_markdown_same_as_utf8(write, codec: str, name: str) -> None:
    body = TEXTS[name]
    document = f"# 安装指南 Install\n\n{body}\n\n## 升级\n\n运行 aurora upgrade 完成升级。\n"
    sections = load(write("guide.md", document, codec))
    assert sections == load(write("guide-utf8.md", document))
    assert sections[0] == Section(body, heading="安装指南 Install")
    assert chunks(sections)[0].text == body


@pytest.mark.parametrize("codec", CODECS)
def test_csv_rows_keep_headers(write, codec: str) -> None:
    text = '型号,显存,说明\r\nAurora-S,6 GB,入门型号\r\nAurora-L,13 GB,"旗舰, 服务器"\r\n'
    rows = (
        "型号: Aurora-S; 显存: 6 GB; 说明: 入门型号\n"
        "型号: Aurora-L; 显存: 13 GB; 说明: 旗舰, 服务器"
    )
    sections = load(write("specs.csv", text, codec))
    assert sections == [TableSection(rows)]
    assert [chunk.text for chunk in chunks(sections)] == [rows]


@pytest.mark.parametrize("codec", CODECS)
def test_tab_separated_chinese_csv(write, codec: str) -> None:
    text = "名称\t版本\t价格\n社区版\t第二版\t免费\n企业版\t第二版\t九百九十九元\n"
    expected = (
        "名称: 社区版; 版本: 第二版; 价格: 免费\n名称: 企业版; 版本: 第二版; 价格: 九百九十九元"
    )
    assert load(write("prices.csv", text, codec)) == [TableSection(expected)]


@pytest.mark.parametrize("codec", CODECS)
def test_json_html_and_jsonl(write, codec: str) -> None:
    record = {"标题": "安装指南", "内容": CHINESE}
    assert load(write("a.json", json.dumps(record, ensure_ascii=False), codec)) == load(
        write("a-utf8.json", json.dumps(record, ensure_ascii=False))
    )
    lines = "\n".join(json.dumps({"问": q}, ensure_ascii=False) for q in ("显存多少？", "How?"))
    assert load(write("a.jsonl", lines, codec)) == load(write("a-utf8.jsonl", lines))
    page = f"<html><body><h1>安装指南</h1><p>{MIXED}</p></body></html>"
    sections = load(write("a.html", page, codec))
    assert sections == load(write("a-utf8.html", page))
    assert "显存需求约 6 GB" in sections[0].text


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", TEXTS)
def test_read_text_and_windows_newlines(codec: str, name: str) -> None:
    text = TEXTS[name]
    assert read_text(text.encode(codec)) == text
    assert read_text(text.replace("\n", "\r\n").encode(codec)) == text.replace("\n", "\r\n")


# Negatives: none of these is UTF-16; binary keeps the binary error, text its own encoding.


def _png() -> bytes:
    rng = random.Random(7)
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + rng.randbytes(4000)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", CHINESE * 20)
    return buffer.getvalue()


BINARIES = {
    "random": lambda: random.Random(1).randbytes(4096),
    "png": _png,
    "zip": _zip,
    "docx": docx_bytes,
    "nul-bytes": lambda: bytes(1024),
    # ASCII with a zero every 9 bytes: zeros on both sides, the rest ASCII read in pairs.
    "ascii-with-scattered-zeros": lambda: b"\x00\x01\x02binary" * 50,
    "c-strings": lambda: b"".join(w + b"\x00" for w in b"name path size mode owner group".split()),
    "odd-length-utf16": lambda: ENGLISH.encode("utf-16-le") + b"!",
    "odd-length-utf16-be": lambda: CHINESE.encode("utf-16-be")[:-1],
}


@pytest.mark.parametrize("name", BINARIES)
def test_binary_keeps_the_binary_error(write, name: str) -> None:
    data = BINARIES[name]()
    assert bomless_utf16(data) is None
    assert error_of(write(f"{name}.txt", data)) == "binary content, not text"


def test_pdf_behind_a_text_extension_is_not_utf16(write) -> None:
    data = pdf_bytes([["Aurora 安装指南", "second line"]])
    assert len(data) % 2 == 0 or bomless_utf16(data + b"\n") is None
    assert bomless_utf16(data) is None
    try:
        text = load(write("doc.txt", data))[0].text
    except LoadError:
        return
    assert text.startswith("%PDF")  # read as 8-bit text, never as UTF-16


@pytest.mark.parametrize("length", [16, 32, 64, 256, 1024, 4096])
def test_random_bytes_are_never_utf16(length: int) -> None:
    rng = random.Random(length)
    for _ in range(300):
        data = rng.randbytes(length)
        assert bomless_utf16(data) is None
        assert bomless_utf16(data.replace(b"\x00", b"\x01")) is None  # no zero bytes to go by


def test_short_random_bytes_are_not_read_as_utf16_by_charset_normalizer() -> None:
    # charset-normalizer took these six bytes for BOM-less UTF-16BE.
    data = b"\x91\xd8\xcd\xc3\x10A"
    try:
        text = read_text(data)
    except LoadError:
        return
    assert text != data.decode("utf-16-be")


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8"])
@pytest.mark.parametrize("name", ["chinese", "mixed", "cjk-only"])
def test_chinese_text_keeps_its_encoding(write, encoding: str, name: str) -> None:
    text = TEXTS[name]
    data = text.encode(encoding)
    if len(data) % 2:  # even length, so that UTF-16 is a real candidate
        text += "。"
        data = text.encode(encoding)
    assert len(data) % 2 == 0
    assert load(write("zh.txt", data)) == [Section(text)]


def test_western_text_is_not_utf16(write) -> None:
    text = "Grüße aus München: naïve façade, crème brûlée and a 6 GB card."
    assert load(write("utf8.txt", text)) == [Section(text)]
    data = text.encode("cp1252")
    assert len(data) % 2 == 0
    assert bomless_utf16(data) is None
    # charset-normalizer's pick among the 8-bit code pages may differ; it stays Latin text.
    assert load(write("cp1252.txt", data))[0].text.startswith("Grüße aus München")
