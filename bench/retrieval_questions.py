"""Questions for bench/eval_retrieval.py, written by us after reading the documents of
bench/retrieval_corpus.py (which are read at run time, never committed).

Each answerable question names the document that answers it (its file stem: "man.1" is
zh/man.1.md, "httpx" is en/httpx.md) and a short passage of that document: a retrieved
chunk counts as a hit when it comes from that document and contains the passage (compared
case-insensitively, ignoring Markdown emphasis and runs of whitespace). Several man pages
repeat whole option descriptions (apropos, whatis, man), so the document matters.

Kinds: "zh" Chinese question on a Chinese document; "x" Chinese question on an English
document (the bundled embedding is English-only: the hard case); "en" English question;
"none" unanswerable from these documents.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    kind: str
    source: str = ""
    passage: str = ""


def _q(qid: str, kind: str, text: str, source: str, passage: str) -> Question:
    return Question(qid, text, kind, source, passage)


def _none(qid: str, text: str) -> Question:
    return Question(qid, text, "none")


QUESTIONS: list[Question] = [
    # Chinese questions on the Chinese man pages.
    _q(
        "zh-apropos-16",
        "zh",
        "apropos 的退出状态 16 表示什么？",
        "apropos.1",
        "未找到符合指定条件的结果",
    ),
    _q(
        "zh-man-16",
        "zh",
        "man 命令返回 16 是什么意思？",
        "man.1",
        "至少有一个页面/文件/关键词不存在",
    ),
    _q(
        "zh-man-all",
        "zh",
        "怎样让 man 显示所有匹配的手册页，而不只是第一个？",
        "man.1",
        "此选项强制 man 显示名字匹配搜索条件的所有的手册页",
    ),
    _q(
        "zh-man-sec8",
        "zh",
        "手册第 8 章节放的是什么命令？",
        "man.1",
        "系统管理命令(通常只针对 root 用户)",
    ),
    _q(
        "zh-man-pager",
        "zh",
        "man 用哪个分页程序？怎么换成别的？",
        "man.1",
        "指定使用哪个输出分页程序",
    ),
    _q(
        "zh-man-width",
        "zh",
        "man 的 MANWIDTH 环境变量有什么作用？",
        "man.1",
        "它的值将用作手册页格式化时的每行长度",
    ),
    _q("zh-man-seccomp", "zh", "怎么关闭 man 的 seccomp 沙盒？", "man.1", "MAN_DISABLE_SECCOMP"),
    _q("zh-man-global", "zh", "man -K 全文搜索有什么缺点？", "man.1", "这是蛮力搜索"),
    _q("zh-man-sections", "zh", "man 默认按什么顺序搜索各个章节？", "man.1", "1 n l 8 3 0 2 3type"),
    _q(
        "zh-mandb-c",
        "zh",
        "mandb 的 -c 选项是干什么的？",
        "mandb.8",
        "删除以前的数据库并重新生成数据库",
    ),
    _q("zh-mandb-types", "zh", "mandb 支持哪几种数据库？", "mandb.8", "Berkeley db"),
    _q(
        "zh-mandb-test",
        "zh",
        "怎么检查手册页是否正确而不改动数据库？",
        "mandb.8",
        "对层次结构搜索路径中的手册页执行正确性检查",
    ),
    _q(
        "zh-whatis-regex",
        "zh",
        "whatis 用 -r 正则匹配会变慢吗？",
        "whatis.1",
        "该选项会使 whatis 略微变慢",
    ),
    _q(
        "zh-whatis-text",
        "zh",
        "如何生成旧式的 whatis 文本数据库？",
        "whatis.1",
        "sort > manpath/whatis",
    ),
    _q(
        "zh-manpath-mandatory",
        "zh",
        "manpath.config 里的 MANDATORY_MANPATH 是做什么的？",
        "manpath.5",
        "这种形式的行指定每个自动生成的 $MANPATH 应包含的 manpath",
    ),
    _q(
        "zh-manpath-colon",
        "zh",
        "$MANPATH 以冒号开头会怎么样？",
        "manpath.5",
        "如果 $MANPATH 使用冒号开头，则默认搜索路径将添加到其开头位置",
    ),
    _q(
        "zh-manpath-catwidth",
        "zh",
        "MINCATWIDTH 的默认值是多少？",
        "manpath.5",
        "如果终端宽度小于 宽度",
    ),
    _q(
        "zh-catman",
        "zh",
        "catman 是用来干什么的？",
        "catman.8",
        "catman 用于创建最新的预格式化手册页集合",
    ),
    _q("zh-lexgrog", "zh", "lexgrog 遇到无法解析的输入会输出什么？", "lexgrog.1", "parse 失败"),
    _q("zh-passwd-lock", "zh", "passwd -l 是怎么锁定密码的？", "passwd.1", "在密码开头添加一个"),
    _q(
        "zh-passwd-status",
        "zh",
        "passwd -S 输出的状态信息有几个字段？",
        "passwd.1",
        "状态信息包含 7 个字段",
    ),
    _q(
        "zh-passwd-expire",
        "zh",
        "怎么让用户密码立即过期，强制他下次登录时修改？",
        "passwd.1",
        "让一个账户的密码立即过期",
    ),
    _q("zh-shadow-fields", "zh", "/etc/shadow 每一行有几个字段？", "shadow.5", "contains 9 fields"),
    _q("zh-shadow-zero", "zh", "账户过期日期为什么不要设成 0？", "shadow.5", "应该避免使用 0"),
    _q("zh-chpasswd-rounds", "zh", "chpasswd 的 SHA 加密默认轮转多少次？", "chpasswd.8", "(5000)"),
    _q(
        "zh-chpasswd-methods",
        "zh",
        "chpasswd 支持哪些加密方法？",
        "chpasswd.8",
        "可用的方法有 DES, MD5",
    ),
    _q(
        "zh-login-r",
        "zh",
        "login 的 -r 选项有什么用？",
        "login.1",
        "为 rlogin (远程登录)执行 autologin",
    ),
    _q(
        "zh-login-nologin",
        "zh",
        "哪个文件可以阻止非 root 用户登录？",
        "login.1",
        "阻止非 root 用户登录",
    ),
    _q(
        "zh-useradd-debian",
        "zh",
        "在 Debian 上加用户应该用 useradd 吗？",
        "useradd.8",
        "administrators should usually use adduser",
    ),
    _q("zh-jieba-modes", "zh", "jieba 支持哪几种分词模式？", "jieba", "支持三种分词模式"),
    _q("zh-jieba-full", "zh", "jieba 全模式有什么缺点？", "jieba", "不能解决歧义"),
    _q("zh-jieba-install", "zh", "怎么安装结巴分词？", "jieba", "pip install jieba"),
    # Chinese questions on English documents.
    _q("x-tiktoken-speed", "x", "tiktoken 比其他开源分词器快多少？", "tiktoken", "3-6x faster"),
    _q("x-tiktoken-bytes", "x", "一个 BPE token 平均对应多少字节？", "tiktoken", "about 4 bytes"),
    _q("x-httpx-http2", "x", "httpx 支持 HTTP/2 吗？", "httpx", "HTTP/1.1 and HTTP/2"),
    _q("x-httpx-cli", "x", "怎么安装 httpx 的命令行客户端？", "httpx", "httpx[cli]"),
    _q("x-uvicorn-loop", "x", "uvicorn[standard] 会装哪个事件循环？", "uvicorn", "uvloop"),
    _q("x-pypdf-aes", "x", "pypdf 怎样支持 AES 加解密？", "pypdf", "pypdf[crypto]"),
    _q("x-pypdf-text", "x", "用 pypdf 怎么提取 PDF 第一页的文字？", "pypdf", "extract_text"),
    _q(
        "x-faiss-gpu",
        "x",
        "Faiss 的 GPU 索引能直接替换 CPU 索引吗？",
        "faiss-cpu",
        "GpuIndexFlatL2",
    ),
    _q("x-faiss-nsg", "x", "Faiss 里的 NSG 是谁实现的？", "faiss-cpu", "implemented NSG"),
    _q(
        "x-tokenizers-speed",
        "x",
        "tokenizers 处理 1GB 文本要多久？",
        "tokenizers",
        "less than 20 seconds to tokenize a GB of text",
    ),
    _q(
        "x-accelerate-what",
        "x",
        "Accelerate 帮 PyTorch 用户省掉了哪些代码？",
        "accelerate",
        "boilerplate code related to multi-GPUs/TPU/fp16",
    ),
    _q("x-psutil-platforms", "x", "psutil 支持哪些操作系统平台？", "psutil", "Sun Solaris"),
    _q(
        "x-cachetools-ttl",
        "x",
        "cachetools 的 TTLCache 怎么设置过期时间？",
        "cachetools",
        "ttl=600",
    ),
    _q("x-typer-fastapi", "x", "Typer 和 FastAPI 是什么关系？", "typer", "little sibling"),
    _q(
        "x-starlette-client",
        "x",
        "Starlette 的测试客户端是基于什么实现的？",
        "starlette",
        "Test client built on",
    ),
    _q(
        "x-urllib3-encodings",
        "x",
        "urllib3 支持哪些压缩编码？",
        "urllib3",
        "gzip, deflate, brotli, and zstd",
    ),
    _q(
        "x-jiter-pydantic",
        "x",
        "jiter 和 pydantic-core 有什么关系？",
        "jiter",
        "standalone version of the JSON parser",
    ),
    _q("x-hfxet-dedup", "x", "hf-xet 是怎么做去重的？", "hf-xet", "chunk-based deduplication"),
    _q("x-tomliw-version", "x", "Tomli-W 兼容哪个版本的 TOML？", "tomli-w", "TOML v1.0.0"),
    _q(
        "x-tomliw-sort",
        "x",
        "Tomli-W 会对文档排序吗？",
        "tomli-w",
        "respects sort order of the input data",
    ),
    _q("x-idna-encode", "x", "idna 的 encode 函数把域名转成什么？", "idna", "A-labels"),
    _q(
        "x-st-dim",
        "x",
        "all-MiniLM-L6-v2 输出的向量是多少维？",
        "sentence-transformers",
        "(3, 384)",
    ),
    # English questions (two on the Chinese man pages).
    _q(
        "en-tiktoken-speed",
        "en",
        "How much faster is tiktoken than a comparable open source tokeniser?",
        "tiktoken",
        "3-6x faster",
    ),
    _q(
        "en-uvicorn-loop",
        "en",
        "Which event loop does uvicorn[standard] install?",
        "uvicorn",
        "uvloop",
    ),
    _q(
        "en-httpx-cli",
        "en",
        "How do I install the HTTPX command line client?",
        "httpx",
        "httpx[cli]",
    ),
    _q(
        "en-psutil-platforms", "en", "Which platforms does psutil support?", "psutil", "Sun Solaris"
    ),
    _q(
        "en-faiss-gpu-author",
        "en",
        "Who implemented the GPU version of Faiss?",
        "faiss-cpu",
        "implemented all of the GPU Faiss",
    ),
    _q(
        "en-tokenizers-speed",
        "en",
        "How long does tokenizers take to tokenize a gigabyte of text?",
        "tokenizers",
        "less than 20 seconds",
    ),
    _q(
        "en-safetensors-numpy",
        "en",
        "How do I save and load numpy arrays with safetensors?",
        "safetensors",
        "from safetensors.numpy import save_file, load_file",
    ),
    _q(
        "en-tomliw-sort",
        "en",
        "Does Tomli-W sort the keys of the document it writes?",
        "tomli-w",
        "respects sort order of the input data",
    ),
    _q(
        "en-chpasswd-rounds",
        "en",
        "What is the default number of SHA rounds chpasswd uses?",
        "chpasswd.8",
        "(5000)",
    ),
    _q(
        "en-shadow-fields",
        "en",
        "How many colon-separated fields does each line of /etc/shadow have?",
        "shadow.5",
        "contains 9 fields",
    ),
    _q(
        "en-useradd-debian",
        "en",
        "What should Debian administrators use instead of useradd?",
        "useradd.8",
        "administrators should usually use adduser",
    ),
    _q(
        "en-man-seccomp",
        "en",
        "How do I turn off the seccomp sandbox of man?",
        "man.1",
        "MAN_DISABLE_SECCOMP",
    ),
    # Not answered by these documents.
    _none("none-cuda", "如何在 Windows 上安装 CUDA 驱动？"),
    _none("none-pork", "红烧肉怎么做？"),
    _none("none-k8s", "Kubernetes 的 Pod 怎么自动扩缩容？"),
    _none("none-expense", "公司的报销流程是什么？"),
    _none("none-mysql", "MySQL 主从复制怎么配置？"),
    _none("none-kernel", "如何修改 Linux 内核的进程调度策略？"),
    _none("none-weather", "明天上海会下雨吗？"),
    _none("none-tiktoken-zh", "tiktoken 自带哪些中文分词词典？"),
    _none("none-vlan", "How do I configure a VLAN on a Cisco switch?"),
    _none("none-ethanol", "What is the boiling point of ethanol?"),
    _none("none-bios", "How do I reset a forgotten BIOS password?"),
    _none("none-faiss-billion", "How much does a Faiss GPU server with eight A100 cards cost?"),
]
