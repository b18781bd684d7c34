"""Questions about scanned pages, answered from the scan as well as from the text? (hit@5)

    .venv/bin/python bench/scan_retrieval.py [--home DIR]

Documents we did not write, read at run time from installed Debian packages: apt's README
(/usr/share/doc/apt/README.md.gz, English) and the Chinese man pages of apropos(1), whatis(1)
and manpath(5) (/usr/share/man/zh_CN, rendered to text by `man -l`). Each is ingested twice,
into two KBs: as a .txt file ("text"), and as an image-only PDF of its pages drawn in
WenQuanYi Micro Hei at 200 DPI, slightly tilted, blurred and noisy like a cheap scan ("scan",
read by OCR at the default ocr.dpi). The questions below were written from the texts; a
question is a hit when one of the 5 results holds its fact (whitespace ignored). The goal: the
scan's hit@5 within 0.05 of the text's.
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ocr_bench import FONT, MARGIN_INCHES, POINT_SIZE, _wrap, degrade, render
from PIL import ImageFont

from kbqa.ingest.pipeline import ingest_paths
from kbqa.retrieval import Retriever
from kbqa.settings import load_settings

README = Path("/usr/share/doc/apt/README.md.gz")
MAN_PAGES = {
    "apropos": Path("/usr/share/man/zh_CN/man1/apropos.1.gz"),
    "whatis": Path("/usr/share/man/zh_CN/man1/whatis.1.gz"),
    "manpath": Path("/usr/share/man/zh_CN/man5/manpath.5.gz"),
}
README_LINES = 80  # the tools, contributing and coding parts
LINES_PER_PAGE = 40
DPI = 200

# (question, fact): written from the documents above.
QUESTIONS = [
    ("Which APT tool normalizes Packages and Sources files?", "apt-sortpkgs"),
    ("What build system does APT use?", "APT uses CMake"),
    ("Which tool does debconf use to prompt configuration questions before installation?",
     "apt-extracttemplates"),
    ("Which APT tool uses removable media as a source for packages?", "apt-cdrom"),
    ("Where is the official APT git repository?", "salsa.debian.org/apt-team/apt"),
    ("Which libraries are maintained as part of the APT project?", "libapt-pkg and libapt-inst"),
    ("apropos 搜索的数据库由哪个程序更新？", "由 mandb 程序更新"),
    ("apropos 的 -a 选项有什么作用？", "只显示匹配提供的全部关键词的项目"),
    ("apropos 的 -e 选项如何匹配关键词？", "严格与手册页名称和描述匹配"),
    ("如何从索引数据库生成旧式的文本 whatis 数据库？", "whatis -M manpath -w"),
    ("whatis 的 -r 选项会把名称解释成什么？", "将每个名称解释为正则表达式"),
    ("设置了环境变量 $MANPATH 时 /etc/manpath.config 的信息会怎样？", "不会覆盖它"),
    ("如果 $MANPATH 使用冒号开头会怎样？", "默认搜索路径将添加到其开头位置"),
    ("manpath 配置文件里以 # 开头的行如何处理？", "视为注释并忽略"),
]  # fmt: skip


def documents() -> dict[str, str]:
    with gzip.open(README, "rt", encoding="utf-8") as readme:
        texts = {"apt-readme": "\n".join(readme.read().splitlines()[:README_LINES])}
    for name, path in MAN_PAGES.items():
        page = subprocess.run(
            ["man", "-l", str(path)],
            capture_output=True,
            text=True,
            check=True,
            env={"MANWIDTH": "72", "LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"},
        ).stdout
        plain = subprocess.run(["col", "-b"], input=page, capture_output=True, text=True)
        texts[name] = plain.stdout.expandtabs()
    return texts


def scanned_pdf(text: str, rng: random.Random) -> bytes:
    font = ImageFont.truetype(FONT, 100)
    column = (8.27 - 2 * MARGIN_INCHES) * 72 / POINT_SIZE * 100
    lines: list[str] = []
    for raw in text.splitlines():
        lines.extend(_wrap(" ".join(raw.split()), font, column) if raw.strip() else [""])
    pages: list[Image.Image] = []
    for start in range(0, len(lines), LINES_PER_PAGE):
        image = degrade(render(lines[start : start + LINES_PER_PAGE], DPI), rng)
        pages.append(image.convert("RGB"))
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=DPI)
    return buffer.getvalue()


def squeeze(text: str) -> str:
    return "".join(text.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(17)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(args.home or root / "home")
        texts = documents()
        for kind in ("text", "scan"):
            (root / kind).mkdir()
        pages = 0
        for name, text in texts.items():
            (root / "text" / f"{name}.txt").write_text(text, encoding="utf-8")
            pdf = scanned_pdf(text, rng)
            (root / "scan" / f"{name}.pdf").write_bytes(pdf)
            pages += pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages")
        for kind in ("text", "scan"):
            started = time.perf_counter()
            report = ingest_paths(settings, kind, [root / kind])
            print(
                f"{kind}: {report.added} documents, {report.chunks} chunks, "
                f"{len(report.failed)} failed, {time.perf_counter() - started:.1f} s"
            )
        print(f"scan: {pages} pages")
        retriever = Retriever(settings)
        found = {"text": 0, "scan": 0}
        print("\n| question | text | scan |\n| --- | --- | --- |")
        for question, fact in QUESTIONS:
            row = []
            for kind in ("text", "scan"):
                hits = retriever.search(question, [kind], 5)
                hit = any(squeeze(fact) in squeeze(h.text) for h in hits)
                found[kind] += hit
                row.append("hit" if hit else "miss")
            print(f"| {question} | {row[0]} | {row[1]} |")
        retriever.close()
        n = len(QUESTIONS)
        text_rate, scan_rate = found["text"] / n, found["scan"] / n
        print(
            f"\nhit@5: text {text_rate:.3f}, scan {scan_rate:.3f}, "
            f"difference {text_rate - scan_rate:+.3f} (goal: within 0.05)"
        )


if __name__ == "__main__":
    main()
