"""read_text: BOMs, UTF-8, GBK/GB18030 Chinese decoded correctly, other encodings detected."""

from __future__ import annotations

import pytest

from kbqa.ingest.loaders import read_text
from kbqa.ingest.types import LoadError

CHINESE = "Aurora 内部知识库安装指南：INT4 量化后显存需求约 6 GB，驱动不低于 450.80.02。"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_unicode_with_and_without_bom(encoding: str) -> None:
    assert read_text(CHINESE.encode(encoding)) == CHINESE


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_bom_either_byte_order(codec: str) -> None:
    assert read_text("\ufeff".encode(codec) + CHINESE.encode(codec)) == CHINESE


@pytest.mark.parametrize("text", [CHINESE, "你好", "版本,显存\n2.1,6 GB\n", "中文测试，安装指南。"])
def test_short_and_long_gbk(text: str) -> None:
    # charset-normalizer alone reads several of these as Big5, CP949 or Shift-JIS.
    assert read_text(text.encode("gbk")) == text


def test_gb18030_only_characters() -> None:
    text = "姓氏𠮷与€符号：GB18030 四字节编码。"
    assert read_text(text.encode("gb18030")) == text


@pytest.mark.parametrize("text", ["Grüße aus München, schöne Straße.", "naïve façade"])
def test_western_text_is_not_read_as_chinese(text: str) -> None:
    decoded = read_text(text.encode("cp1252"))
    assert not any("\u4e00" <= char <= "\u9fff" for char in decoded)


def test_undecodable_bytes_raise() -> None:
    with pytest.raises(LoadError):
        read_text(b"\xff\xfe\x00\xd8")  # UTF-16 BOM then a lone surrogate
