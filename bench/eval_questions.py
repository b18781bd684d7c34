"""The answer-quality evaluation set: questions about documents kbqa's developers did not write.

The documents, read at run time and never committed: the long descriptions (READMEs) in the
METADATA of packages installed in the virtual environment (jieba's is Chinese, the others
English) and three Simplified Chinese manual pages of Debian's passwd package (partly
translated, so Chinese and English mix). The questions and expected facts were written by us
after reading those documents.

`answer`: lower-case strings, any of which a correct answer contains.
`evidence`: strings, any of which the chunk holding the answer contains (case-insensitive).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAN_PAGES = ("man1/passwd.1.gz", "man1/chage.1.gz", "man8/groupadd.8.gz")
"""Under /usr/share/man/zh_CN; questions about them are skipped where they are missing."""
PACKAGES = (
    "jieba",
    "nh3",
    "httpx",
    "tiktoken",
    "gguf",
    "pypdf",
    "faiss-cpu",
    "uvicorn",
    "beautifulsoup4",
    "markdown-it-py",
    "typer",
)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    kind: str
    """answerable | unanswerable | followup (answerable, needs the history)."""
    answer: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    history: list[list[str]] = field(default_factory=list)


def _a(qid: str, q: str, answer: tuple[str, ...], evidence: tuple[str, ...] = ()) -> Question:
    return Question(qid, q, "answerable", answer, evidence or answer)


def _u(qid: str, q: str) -> Question:
    return Question(qid, q, "unanswerable")


def _f(
    qid: str, history: list[list[str]], q: str, answer: tuple[str, ...], evidence: tuple[str, ...]
) -> Question:
    return Question(qid, q, "followup", answer, evidence, history)


QUESTIONS: list[Question] = [
    # English questions, English documents.
    _a("en-nh3-speed", "How many times faster is nh3 than bleach?", ("20",), ("20 times",)),
    _a("en-nh3-lib", "Which HTML sanitization library does nh3 provide bindings to?", ("ammonia",)),
    _a("en-httpx-http2", "Which HTTP versions does HTTPX support?", ("http/2",)),
    _a("en-httpx-cli", "How do I install the HTTPX command line client?", ("httpx[cli]",)),
    _a("en-tiktoken-what", "What is tiktoken?", ("bpe", "tokeniser", "tokenizer"), ("BPE",)),
    _a(
        "en-tiktoken-speed", "How much faster is tiktoken than other tokenisers?", ("3-6", "3 to 6")
    ),
    _a(
        "en-bpe-bytes",
        "On average, how many bytes of text does one BPE token correspond to?",
        ("4 bytes", "four bytes", "about 4"),
        ("4 bytes",),
    ),
    _a("en-gguf-name", "What does the GGUF file format name stand for?", ("ggml universal",)),
    _a("en-gguf-gui", "Which pip extra installs the visual GGUF editor?", ("gui",), ("gguf[gui]",)),
    _a("en-pypdf-aes", "How do I install pypdf with AES encryption support?", ("pypdf[crypto]",)),
    _a("en-faiss-what", "What is Faiss used for?", ("similarity search",)),
    _a(
        "en-faiss-hnsw",
        "Which Faiss methods add an indexing structure on top of raw vectors?",
        ("hnsw", "nsg"),
    ),
    _a(
        "en-uvicorn-protocols",
        "Which protocols does Uvicorn support?",
        ("websocket", "http/2"),
        ("WebSockets",),
    ),
    _a("en-uvicorn-loop", "Which event loop does uvicorn[standard] install?", ("uvloop",)),
    _a(
        "en-bs4-py2",
        "When did Beautiful Soup stop supporting Python 2?",
        ("2020",),
        ("December 31",),
    ),
    _a(
        "en-bs4-last",
        "What was the final Beautiful Soup 4 release that supported Python 2?",
        ("4.9.3",),
    ),
    _a(
        "en-mdit-spec",
        "Which specification does markdown-it-py follow for baseline parsing?",
        ("commonmark",),
    ),
    _a(
        "en-typer-sibling",
        "Typer is the little sibling of which framework?",
        ("fastapi",),
        ("little sibling",),
    ),
    # Chinese questions, Chinese document.
    _a(
        "zh-jieba-modes",
        "jieba 支持哪几种分词模式？",
        ("精确模式", "全模式", "搜索引擎模式"),
        ("三种分词模式",),
    ),
    _a("zh-jieba-license", "jieba 使用什么授权协议？", ("mit",), ("MIT 授权",)),
    _a(
        "zh-jieba-install",
        "怎么安装 jieba？",
        ("pip install jieba", "easy_install"),
        ("pip install jieba",),
    ),
    _a("zh-jieba-full", "全模式分词有什么缺点？", ("歧义",), ("不能解决歧义",)),
    _a("zh-jieba-search", "搜索引擎模式适合用来做什么？", ("搜索引擎", "召回率"), ("提高召回率",)),
    # Chinese questions, Chinese manual pages.
    _a("zh-passwd-d", "passwd 的 -d 选项有什么作用？", ("删除",), ("删除用户密码",)),
    _a("zh-passwd-expire", "怎么让一个账户的密码立即过期？", ("-e", "--expire"), ("立即过期",)),
    _a(
        "zh-passwd-length",
        "一般来讲，密码应该包含几位字符？",
        ("6 到 8", "6到8", "6-8"),
        ("6 到 8 位字符",),
    ),
    _a(
        "zh-passwd-locked",
        "被锁定了密码的用户可以更改密码吗？",
        ("不允许", "不能", "不可以"),
        ("不允许更改密码",),
    ),
    _a("zh-groupadd-r", "groupadd 的 -r 选项是做什么的？", ("系统组",), ("创建一个系统组",)),
    _a("zh-chage-l", "chage 用哪个选项显示账户年龄信息？", ("-l", "--list"), ("显示账户年龄信息",)),
    _a("x-groupadd-length", "组名最长可以有多少个字符？", ("32",), ("32 characters",)),
    # Chinese questions, English documents (the bundled embedding is English-only).
    _a("x-nh3-speed", "nh3 比 bleach 快多少倍？", ("20",), ("20 times",)),
    _a("x-pypdf-aes", "pypdf 怎么安装 AES 加密支持？", ("pypdf[crypto]",)),
    _a("x-bs4-last", "Beautiful Soup 最后一个支持 Python 2 的版本是哪个？", ("4.9.3",)),
    _a("x-uvicorn-loop", "uvicorn[standard] 用什么事件循环？", ("uvloop",)),
    # Written after min_relevance was chosen (held out from the calibration): paraphrases.
    _a(
        "h-httpx-shell",
        "Can I call HTTPX from my shell instead of from Python code?",
        ("httpx[cli]", "command-line", "command line"),
        ("command-line client",),
    ),
    _a(
        "h-pypdf-text",
        "What pypdf code reads the text of the first page of a PDF?",
        ("extract_text",),
    ),
    _a("h-faiss-gpu", "Does Faiss run on GPUs?", ("gpu",), ("GPU implementation",)),
    _a("h-jieba-trad", "jieba 能处理繁体中文吗？", ("繁体",), ("繁体分词",)),
    _a("h-jieba-dict", "jieba 可以加自己的词典吗？", ("自定义词典", "词典"), ("自定义词典",)),
    _a("h-uvicorn-what", "Uvicorn 是什么？", ("asgi",), ("ASGI web server",)),
    _u("h-u-router", "How do I reset my router's admin password?"),
    _u("h-u-blockchain", "什么是区块链？"),
    _u("h-u-typer-db", "Which database does Typer use to store its data?"),
    _u("h-u-bert", "How do I fine-tune BERT on my own data?"),
    _u("h-u-driver", "显卡驱动怎么升级？"),
    # Not in the documents: off-topic, and on-topic facts the documents do not give.
    _u("u-en-capital", "What is the capital of Australia?"),
    _u("u-en-bread", "How do I bake sourdough bread at home?"),
    _u("u-en-worldcup", "Who won the 2018 FIFA World Cup?"),
    _u("u-en-ethanol", "What is the boiling point of ethanol?"),
    _u("u-en-vlan", "How do I configure a VLAN on a Cisco switch?"),
    _u("u-en-ibuprofen", "What is the maximum daily dose of ibuprofen?"),
    _u("u-en-faiss-mem", "How much GPU memory does Faiss need to index one billion vectors?"),
    _u("u-en-httpx-author", "In which year was the HTTPX project first released?"),
    _u("u-zh-pork", "红烧肉怎么做？"),
    _u("u-zh-weather", "明天北京的天气怎么样？"),
    _u("u-zh-passport", "如何申请护照？"),
    _u("u-zh-quantum", "量子计算机的原理是什么？"),
    _u("u-zh-leave", "公司的年假有多少天？"),
    _u("u-zh-jieba-author", "jieba 的作者是哪一年出生的？"),
    _u("u-zh-passwd-year", "passwd 命令最早是哪一年出现的？"),
    # Follow-ups: the question only makes sense with the history.
    _f(
        "f-en-nh3",
        [["Which HTML sanitization library does nh3 provide bindings to?", "It binds to ammonia."]],
        "How much faster is it than bleach?",
        ("20",),
        ("20 times",),
    ),
    _f(
        "f-en-gguf",
        [["What does the GGUF file format name stand for?", "GGML Universal File."]],
        "Which pip extra installs its visual editor?",
        ("gui",),
        ("gguf[gui]",),
    ),
    _f(
        "f-en-bs4",
        [["When did Beautiful Soup stop supporting Python 2?", "On December 31, 2020."]],
        "What was the last release that still supported it?",
        ("4.9.3",),
        ("4.9.3",),
    ),
    _f(
        "f-en-uvicorn",
        [["Which protocols does Uvicorn support?", "HTTP/1.1, HTTP/2 and WebSockets."]],
        "And which event loop does its standard extra install?",
        ("uvloop",),
        ("uvloop",),
    ),
    _f(
        "f-zh-jieba",
        [["jieba 支持哪几种分词模式？", "精确模式、全模式和搜索引擎模式。"]],
        "它用什么授权协议？",
        ("mit",),
        ("MIT 授权",),
    ),
    _f(
        "f-zh-passwd",
        [["passwd 的 -l 选项有什么作用？", "锁定指定账户的密码。"]],
        "那 -e 呢？",
        ("过期",),
        ("立即过期",),
    ),
    _f(
        "f-zh-pypdf",
        [["怎么安装 pypdf？", "pip install pypdf"]],
        "那 AES 加密支持呢？",
        ("pypdf[crypto]",),
        ("pypdf[crypto]",),
    ),
]
