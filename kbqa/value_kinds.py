"""What kind of value a question asks for, and whether a passage holds a value of that kind.

"训练 ChatGLM-6B 一共花了多少 GPU 小时" shares every content word with a chunk of ChatGLM-6B's
README that talks about training; the chunk gives no number of hours, so it cannot answer. The
lexical share and an English-only embedding both see "the same topic"; what tells the two apart
is the kind of answer asked for. A question that asks for a duration, a price, a speed, an amount
of memory, a percentage, a ratio, a date, a version or a piece of hardware can only be
answered by a passage that holds a value of that kind: a number with a time unit, a currency, a
rate, a byte size, a `%`, an `x`/`倍`, a date, a dotted version, a GPU model. So is a question
asking for a processor or chip (a CPU or phone SoC model, cores, GHz) and one asking who made
something (a passage naming an author, a maintainer, a team, or holding an e-mail address).
A count or a limit asked with no unit of another kind (多少个字符, how many workers, the
maximum) asks for a figure: any number answers it (NUMBER, the fallback kind). A timeout and
"多久" ask for a duration (a schedule, daily or 每天, answers them), a version or release asked
for as "the minimum Python version" or "in which tiktoken release" for a version.

The patterns are deliberately loose on the passage's side (a table's header "tokens/s" far from
its numbers counts, any number with GB counts) and strict on the question's side (only explicit
wording asks for a kind: "多少小时", "in seconds", "how much … cost", "哪个版本"), so that an
answerable question loses little and a question about a kind of value the passage lacks is
marked. Text is matched NFKC-folded and lower-cased, as kbqa.relevance reads it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

_NUMBER = r"(?:(?<![0-9a-z_.])\d(?:[\d,]*\d)?(?:\.\d+)?|[零〇一二两三四五六七八九十百千万半]+)"
"""A number standing alone (not the tail of a hash or an identifier: 6436d), or in Chinese
numerals (十天, 两小时)."""
_NOT_LATIN = r"(?![a-z])"
NUMBER = "number"
"""The kind of a count or a limit asked with no unit of another kind: any figure answers it."""


@dataclass(frozen=True)
class ValueKind:
    name: str
    asked: re.Pattern[str]
    """Matches a question that asks for a value of this kind."""
    held: re.Pattern[str]
    """Matches a passage that holds one."""


def _kind(name: str, asked: str, held: str) -> ValueKind:
    return ValueKind(name, re.compile(asked), re.compile(held, re.MULTILINE))


KINDS: tuple[ValueKind, ...] = (
    _kind(
        "duration",
        r"(?:多少|几)[\sa-z0-9个]*?(?:小时|天|分钟|秒钟?|周|星期)(?!气)"
        r"|how many (?:[\w-]+ )?(?:hours|days|minutes|seconds|weeks)"
        r"|how long (?:does|did|do|will|would|to)\b|\bin (?:seconds|minutes|hours|days)\b"
        r"|多久|多长时间|\btimeout\b|超时",
        rf"{_NUMBER}\s*(?:小时|天|分钟|秒|周|个月|h|hrs?|hours?|days?|min|mins|minutes?|s|secs?"
        rf"|seconds?|ms|weeks?|months?){_NOT_LATIN}|\b(?:hourly|daily|weekly)\b|每(?:小时|天|周)",
    ),
    _kind(
        "money",
        r"多少钱|价格|价钱|费用|成本|花费|售价|how much (?:does|did|do|will|would)\b.*\bcost\b"
        r"|\bcosts?\b|\bprices?\b|\bdollars?\b|美元|人民币|\busd\b|\brmb\b",
        rf"[$¥€£]\s*{_NUMBER}|{_NUMBER}\s*(?:美元|元|万元|亿元|dollars?|usd|rmb|cny|euros?)"
        rf"{_NOT_LATIN}",
    ),
    _kind(
        "rate",
        r"每秒|per second|(?<![a-z])(?:tokens?|requests?|req|it)/s\b|\bqps\b|\brps\b"
        r"|吞吐|throughput",
        r"/s(?![a-z])|/秒|每秒|per second|\bqps\b|\brps\b|吞吐|throughput",
    ),
    _kind(
        "memory",
        r"显存|内存|\bmemory\b|\bvram\b|\bram\b|file size|文件大小|磁盘|disk space|存储空间"
        r"|(?:镜像|文件|安装包|体积)[^，,。？?]*?多大"
        r"|\bhow (?:big|large) is the (?:file|image|download)\b",
        rf"{_NUMBER}\s*(?:g|gb|gib|mb|mib|kb|kib|tb|tib|bytes?|字节){_NOT_LATIN}",
    ),
    _kind(
        "percentage",
        # A rate asked in Chinese (召回率能达到多少) is a share: a percentage, or a score in a
        # table (| Accuracy (MMLU) | 45.47 |).
        r"百分之|百分比|\bpercent(?:age)?\b|%"
        r"|(?:召回|准确|精确|正确|命中|错误|通过|成功|识别)率[^，,。？?]*?(?:多少|几)",
        rf"{_NUMBER}\s*\\?%|百分之|\bpercent\b|^\|.*\d\.\d|(?:^|; )[^:;\n]{{1,80}}: \d+\.\d",
    ),
    _kind(
        "ratio",
        r"(?:几|多少)倍|how many times|(?:快|慢|提升|提高|降低|减少)了?(?:百分之)?多少"
        r"|how much (?:faster|slower|more|less|better|smaller|larger|bigger|higher|lower)\b"
        r"|\bby how much\b",
        rf"{_NUMBER}\s*(?:%|倍|x|×){_NOT_LATIN}|百分之|\btimes (?:faster|slower|more|less|as)\b",
    ),
    _kind(
        "hardware",
        r"(?:which|what) (?:gpus?|graphics cards?|cards?|hardware)\b"
        r"|什么(?:型号的?)?(?:显卡|gpu)|哪(?:种|款|个|张|块)(?:显卡|gpu)|显卡型号|gpu ?型号",
        r"(?<![a-z0-9])(?:a|h|v|t|p|l|k)\d{2,3}(?![0-9])|\brtx\b|\bgtx\b|tesla|quadro|radeon|geforce"
        r"|titan|(?<![a-z0-9])mi\d{2,3}|ascend|昇腾|(?<![0-9])[1-9]0[6-9]0(?![0-9])",
    ),
    _kind(
        "processor",
        r"(?:which|what) (?:[\w-]+ )?(?:chips?|processors?|cpus?|socs?)\b"
        r"|什么(?:型号的?)?(?:芯片|处理器|cpu)|哪(?:种|款|个|颗)(?:芯片|处理器|cpu)"
        r"|(?:芯片|处理器|cpu) ?型号",
        r"intel|\bamd\b|\barm\b|xeon|epyc|ryzen|core i\d|snapdragon|骁龙|dimensity|天玑|kirin"
        r"|麒麟|exynos|apple m\d|(?<![a-z0-9])m\d (?:pro|max|ultra|chip)|\d\s*ghz|\d+\s*核"
        r"|\d+[- ]cores?\b",
    ),
    _kind(
        "person",
        r"\bwho (?:is|was|were|are|wrote|created|started|initiated|developed|designed|"
        r"maintains|maintained|made|invented|founded|leads|led)\b|\bwhose\b|作者|开发者|维护者"
        r"|创始人|创建者|发明者|是谁|谁(?:写|开发|维护|创建|发起|发明|提出)",
        r"author|\bwrote\b|written by|created by|developed by|maintained by|maintainer|founder"
        r"|initiated|invented|作者|开发者|维护者|创始人|创建者|编写|开发维护|团队|\bteam\b"
        r"|实验室|\blab\b|大学|university|公司|company|[a-z0-9._-]+@[a-z0-9-]+\.[a-z]",
    ),
    _kind(
        "date",
        r"哪天|哪一天|什么时候|何时|哪年|哪一年|什么日期|发布日期"
        r"|\bwhen (?:was|were|did|is|will)\b|\bwhat date\b|\bwhich date\b|\brelease date\b",
        r"(?<![\d.])\d{4}\s*[-/.年]\s*\d{1,2}(?![\d.])|\d{4}年|(?<![\d/])\d{2}/\d{2}/\d{2}(?![\d/])"
        r"|\d{1,2}\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov"
        r"|dec)[a-z]*\s+\d{4}|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\s+\d{1,2},?"
        r"\s+\d{4}",
    ),
    _kind(
        "version",
        r"(?:哪个|什么|哪一)版本|版本号|最低版本|哪一版"
        r"|\b(?:which|what|minimum|oldest|latest|first) (?:[\w-]+ )?(?:versions?|releases?)\b"
        r"|\bin which [\w-]+ (?:version|release)\b",
        r"\d+\.\d+|version\s*\d|版本\s*\d|(?<![a-z])v\d",
    ),
    _kind(
        NUMBER,
        # A count or a limit: the answer is a figure, whatever its unit.
        r"多少(?:个|条|次|行|层|位|项|张|块|名|人|字|词|轮|种)|几(?:个|条|次|行|层|位|项|张|块|名|人|轮)"
        r"|\bhow many\b|\b(?:maximum|minimum|max|min)\b|\bsize\b"
        r"|上限|下限|最多|最大|最长|最少|最小",
        r"(?<![a-z_])\d",
    ),
)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


@lru_cache(maxsize=256)
def asked_kinds(question: str) -> tuple[ValueKind, ...]:
    """The kinds of value `question` asks for (often none: "how do I …", "why …")."""
    text = _fold(question)
    kinds = tuple(kind for kind in KINDS if kind.asked.search(text))
    # A figure is the fallback: "多少个小时" asks for a duration, not for any number.
    specific = tuple(kind for kind in kinds if kind.name != NUMBER)
    return specific or kinds


def held_kinds(question: str, passage: str) -> frozenset[str]:
    """The names of the kinds `question` asks for that `passage` holds a value of.

    `passage` is taken as it is given, folded as `_fold` folds (kbqa.relevance's haystacks are)."""
    return frozenset(kind.name for kind in asked_kinds(question) if kind.held.search(passage))


def missing_kinds(question: str, passage: str) -> int:
    """How many of the kinds `question` asks for `passage` holds no value of (kbqa.evidence
    weighs a sentence by it; kbqa.relevance asks where in a chunk the value stands instead)."""
    held = held_kinds(question, passage)
    return sum(1 for kind in asked_kinds(question) if kind.name not in held)
