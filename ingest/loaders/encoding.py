"""Bytes → text: BOMs, UTF-8, GBK/GB18030 Chinese, else charset-normalizer; binary refused."""

from __future__ import annotations

import codecs
import re
import unicodedata

import charset_normalizer

from ingest.types import LoadError

# Longest BOM first: the UTF-32-LE BOM begins with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_IDEOGRAPH = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# Ideographs, CJK and full-width punctuation, general punctuation (“” — …) and currency (€).
_PLAUSIBLE = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
    r"\u3000-\u303f\uff00-\uffef\u2000-\u206f\u20a0-\u20cf]"
)
_CONTROL_OK = frozenset("\t\n\r\f\v")
_SAMPLE = 65536


def read_text(data: bytes) -> str:
    """Decode a text file's bytes; raises LoadError when no encoding fits."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise LoadError(f"invalid {encoding} text after its byte-order mark") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # charset-normalizer misreads short GBK text as Big5, CP949 or Shift-JIS, and GBK is
    # what Chinese files that are not UTF-8 usually are: accept GB18030 when it reads as Chinese.
    try:
        chinese = data.decode("gb18030")
    except UnicodeDecodeError:
        chinese = None
    if chinese is not None and _reads_as_chinese(chinese):
        return chinese
    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        raise LoadError("cannot detect the text encoding")
    return str(best)


def decode_text_file(data: bytes) -> str:
    """read_text plus the binary check every text format needs; newlines become "\\n"."""
    if b"\x00" in data[:_SAMPLE] and not data.startswith(tuple(bom for bom, _ in _BOMS)):
        raise LoadError("binary content, not text")
    text = read_text(data)
    sample = text[:_SAMPLE]
    controls = sum(
        1 for c in sample if c not in _CONTROL_OK and unicodedata.category(c) in ("Cc", "Cs")
    )
    if "\x00" in sample or controls > max(2, len(sample) // 50):
        raise LoadError("binary content, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _reads_as_chinese(text: str) -> bool:
    """True when the non-ASCII characters are Chinese as GBK text decodes, not noise.

    Real GBK Chinese is Chinese characters and symbols, mostly within GB2312, in runs;
    Latin-1 or Big5 bytes decoded as GB18030 give isolated or rare characters.
    """
    sample = text[:_SAMPLE]
    non_ascii = [c for c in sample if ord(c) > 127]
    if not non_ascii:
        return True
    plausible = sum(1 for c in non_ascii if _PLAUSIBLE.match(c) or _in_gb2312(c))
    if plausible < 0.9 * len(non_ascii):
        return False
    ideographs = [i for i, c in enumerate(sample) if _IDEOGRAPH.match(c)]
    if not ideographs:
        return False
    if sum(1 for i in ideographs if _in_gb2312(sample[i])) < 0.8 * len(ideographs):
        return False
    positions = set(ideographs)
    in_runs = sum(1 for i in ideographs if i - 1 in positions or i + 1 in positions)
    return in_runs >= 0.5 * len(ideographs)


def _in_gb2312(char: str) -> bool:
    try:
        char.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True
