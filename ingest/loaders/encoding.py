"""Bytes → text: BOMs, UTF-8, GBK/GB18030 Chinese, BOM-less UTF-16, else charset-normalizer.

Binary content is refused with one clear error.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

import charset_normalizer

from kbqa.ingest.types import LoadError

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
# What text written as UTF-16 is made of: Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic,
# Indic scripts, Thai, Georgian, Vietnamese Latin, punctuation and symbols, CJK (radicals,
# punctuation, kana, bopomofo, ideographs, Hangul, full-width forms) and, as surrogate pairs
# (which random bytes seldom make), the supplementary planes. Other BMP code points, private-use
# or unassigned ones are what bytes that are not UTF-16 turn into.
_UTF16_TEXT = re.compile(
    r"[\u0020-\u007e\u00a0-\u024f\u0300-\u036f\u0370-\u06ff\u0900-\u0dff\u0e00-\u0e7f"
    r"\u10a0-\u10ff\u1e00-\u1eff\u2000-\u2bff\u2e80-\u2fdf\u3000-\u33ff\u3400-\u4dbf"
    r"\u4e00-\u9fff\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
    r"\U00010000-\U0003ffff]"
)
# CJK text: ideographs, CJK punctuation, kana, bopomofo and full-width forms (not Hangul).
_CJK_TEXT = re.compile(
    r"[\u3000-\u33ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
    r"\U00020000-\U0003134f]"
)
_FORMAT_OK = frozenset("\u00ad\u200b\u200c\u200d\u2060")  # soft hyphen, zero-width (non)joiners
_WIDE = ("utf_16", "utf_16_le", "utf_16_be", "utf_32", "utf_32_le", "utf_32_be")
# Each language's everyday ideographs are in one of these level-1 sets (by the encoded first
# byte): GB2312 level 1 (3755), Big5 common (5401), JIS X 0208 level 1 (2965). Random code
# units land in each less than a third of the time.
_COMMON_IDEOGRAPHS = (("gb2312", 0xB0, 0xD7), ("big5", 0xA4, 0xC6), ("cp932", 0x88, 0x98))


def read_text(data: bytes) -> str:
    """Decode a text file's bytes; raises LoadError when no encoding fits."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise LoadError(f"invalid {encoding} text after its byte-order mark") from exc
    has_zeros = b"\x00" in data[:_SAMPLE]
    if has_zeros:  # UTF-8 or GB18030 text has no zero bytes; ASCII as UTF-16 does
        utf16 = bomless_utf16(data)
        if utf16 is not None:
            return utf16
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
    if not has_zeros:  # UTF-16 of CJK text alone (no ASCII): few or no zero bytes
        utf16 = bomless_utf16(data)
        if utf16 is not None:
            return utf16
    # UTF-16/32 without a byte-order mark is bomless_utf16's call: charset-normalizer reads
    # short random bytes as UTF-16.
    best = charset_normalizer.from_bytes(data, cp_exclusion=list(_WIDE)).best()
    if best is None:
        raise LoadError("cannot detect the text encoding")
    return str(best)


def decode_text_file(data: bytes) -> str:
    """read_text plus the binary check every text format needs; newlines become "\\n"."""
    if b"\x00" in data[:_SAMPLE] and not data.startswith(tuple(bom for bom, _ in _BOMS)):
        # Zero bytes: UTF-16 without a byte-order mark, else binary (charset-normalizer
        # would happily "detect" an encoding for an image).
        utf16 = bomless_utf16(data)
        if utf16 is None:
            raise LoadError("binary content, not text")
        text = utf16
    else:
        text = read_text(data)
    sample = text[:_SAMPLE]
    controls = sum(
        1 for c in sample if c not in _CONTROL_OK and unicodedata.category(c) in ("Cc", "Cs")
    )
    if "\x00" in sample or controls > max(2, len(sample) // 50):
        raise LoadError("binary content, not text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def bomless_utf16(data: bytes) -> str | None:
    """The text when data is UTF-16 (LE or BE) without a byte-order mark, else None.

    Exactly one byte order must decode strictly (no unpaired surrogates) into plausible text;
    see _reads_as_utf16. Odd lengths, NUL code units and ambiguous data are not UTF-16.
    """
    if len(data) < 2 or len(data) % 2:
        return None
    found = []
    for encoding in ("utf-16-le", "utf-16-be"):
        try:
            # Strict decoding of the sample first: most non-UTF-16 data fails in its first bytes.
            sample = data[: 2 * _SAMPLE].decode(encoding)
        except UnicodeDecodeError as exc:
            # A surrogate pair cut at the sample's end is fine; any other error is not.
            if exc.start < 2 * _SAMPLE - 2 or len(data) <= 2 * _SAMPLE:
                continue
            sample = data[: exc.start].decode(encoding)
        if _reads_as_utf16(sample):
            found.append(encoding)
    if len(found) != 1:
        return None
    try:
        return data.decode(found[0])
    except UnicodeDecodeError:
        return None


def _reads_as_utf16(text: str) -> bool:
    """True when text decoded as UTF-16 looks written, not like bytes of something else.

    Other bytes read as UTF-16 give NULs (zero byte pairs), controls, surrogates, private-use,
    unassigned or rare-script code points and rare ideographs; ASCII read in the wrong byte
    order gives U+xx00. ASCII characters (a zero byte each) are strong evidence; a UTF-16 file
    with few of them must be mostly CJK, with everyday ideographs.
    """
    chars = [c for c in text if not c.isspace()]
    if not chars or "\x00" in text:
        return False
    if sum(1 for c in chars if not _is_utf16_text(c)) > len(chars) // 50:
        return False
    # Zero bytes: a Latin-1 character (U+00xx) has one in its high byte, U+xx00 in its low
    # byte. Text has them on one side ("一" is U+4E00); ASCII read in the wrong byte order
    # ("a" → U+6100) or binary with scattered zeros has them on the other side, or on both.
    latin = sum(1 for c in text if ord(c) < 0x100)
    swapped = sum(1 for c in text if ord(c) >= 0x100 and ord(c) & 0xFF == 0)
    ideographs = [c for c in chars if _IDEOGRAPH.match(c)]
    rare = len(ideographs) - max(
        sum(1 for c in ideographs if _first_byte_in(c, *level_1)) for level_1 in _COMMON_IDEOGRAPHS
    )
    kana = sum(1 for c in chars if "\u3040" <= c <= "\u30ff")
    # CJK read from ASCII bytes in pairs: "a is" → U+6120 U+7369, ideographs both.
    ascii_pairs = sum(1 for c in text if _is_ascii_byte(ord(c) >> 8) and _is_ascii_byte(ord(c)))
    ascii_pairs -= kana  # hiragana are "0A"-"0\x7f" pairs
    # Latin text is mostly ASCII; random bytes next to zeros are as often Latin-1 or controls.
    ascii_text = sum(1 for c in text if c < "\x7f" and (c >= " " or c in _CONTROL_OK))
    if (
        latin >= max(1, len(text) // 20)
        and ascii_text >= 2
        and 2 * ascii_text >= latin
        and 4 * swapped <= latin
        and (2 * latin >= len(text) or 4 * ascii_pairs <= 3 * (len(text) - latin))
    ):
        return 2 * rare <= len(ideographs)  # dictionaries and names: many rare ideographs
    # Few zero bytes to go by: mostly CJK, at least 8 ideographs or kana, few rare ideographs.
    cjk = sum(1 for c in chars if _CJK_TEXT.match(c))
    return (
        cjk >= 0.6 * len(chars)
        and len(ideographs) + kana >= 8
        and 5 * rare <= len(ideographs)
        and 4 * ascii_pairs <= 3 * len(text)
        and swapped <= 2 + len(text) // 16
    )


def _is_utf16_text(char: str) -> bool:
    category = unicodedata.category(char)
    if category in ("Cc", "Cn", "Co", "Cs") or (category == "Cf" and char not in _FORMAT_OK):
        return False
    return bool(_UTF16_TEXT.match(char))


def _first_byte_in(char: str, encoding: str, low: int, high: int) -> bool:
    try:
        return low <= char.encode(encoding)[0] <= high
    except UnicodeEncodeError:
        return False


def _is_ascii_byte(value: int) -> bool:
    return 0x20 <= value & 0xFF <= 0x7E


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
