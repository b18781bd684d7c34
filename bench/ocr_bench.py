"""OCR accuracy and speed on this CPU: pages of text we wrote, rendered as scans.

    .venv/bin/python bench/ocr_bench.py [--pages 3] [--pdf-pages 5]

1. Accuracy: each page (Chinese and English paragraphs below, wrapped to an A4 text column, 12 pt
   WenQuanYi Micro Hei) is drawn as a clean 300-DPI scan and as a noisy 150-DPI one (rotated by
   up to ±1.5°, blurred a little, Gaussian noise, JPEG quality 60), loaded through
   `load_document` like any image, and compared with the text drawn. Character accuracy =
   1 − edit distance / reference length, whitespace removed from both (line breaks and the
   spaces OCR may merge or split are not characters a reader misses); the same with single
   spaces kept is shown too.
2. Speed: an image-only PDF of `--pdf-pages` pages (the 150-DPI noisy pages) through `load_pdf`
   with the default settings (rendered at ocr.dpi = 200, then OCR), in pages per second.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbqa.ingest.loaders import load_document
from kbqa.ingest.loaders.pdf import load_pdf
from kbqa.ingest.types import LoadOptions

FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
A4_INCHES = (8.27, 11.69)
MARGIN_INCHES = 1.0
POINT_SIZE = 12

PARAGRAPHS = [
    "知识库问答系统把企业内部的文档切分成片段，计算向量后存入索引。用户提问时，系统先检索最相关的"
    "片段，再让本地大模型根据这些片段作答，并在答案中标注出处，方便核对。",
    "The ingest command reads every file under a folder, skips the ones that did not change "
    "since the last run, and removes documents whose files are gone. Nothing leaves the machine.",
    "扫描件没有文字层，只能通过光学字符识别读取。识别的准确率取决于分辨率、噪声和倾斜角度；"
    "对于二百 DPI 以上的清晰扫描，中文和英文的字符准确率通常都很高。",
    "Version 2.1 needs Python 3.11 and about 6 GB of memory with INT4 weights; FP16 takes 13 GB. "
    "Run the server on port 8000 and open the web page to upload files.",
    "表格中的每一行都会和表头一起保存，例如“模式：INT4；显存：6 GB”。这样检索到的片段即使"
    "脱离原表格，也能看懂每个数字的含义。",
    "Backups run every night at 02:00. To restore one, stop the server, copy the folder back "
    "and start it again; the index is checked on start and rebuilt when damaged.",
    "会议纪要：第三季度计划上线文件夹监控功能，保存文件后三秒内即可检索到新内容。负责人：王强、"
    "李娜；截止日期为九月三十日。",
    "Slides are read one per page, with the title as heading and the speaker notes kept, so a "
    "question about a talk can cite the slide it came from.",
]


def page_texts(pages: int) -> list[list[str]]:
    """`pages` pages of wrapped lines, cycling through the paragraphs (a blank line between)."""
    font = ImageFont.truetype(FONT, 100)
    column = (A4_INCHES[0] - 2 * MARGIN_INCHES) * 72 / POINT_SIZE * 100  # in 100-px glyph units
    lines: list[str] = []
    for i in range(pages * 3):
        lines.extend(_wrap(PARAGRAPHS[i % len(PARAGRAPHS)], font, column))
        lines.append("")
    per_page = len(lines) // pages
    return [lines[p * per_page : (p + 1) * per_page] for p in range(pages)]


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy wrap: words for Latin text, single characters for Chinese."""
    tokens = re.findall(r"[A-Za-z0-9.,;:'()/-]+ ?|.", text)
    lines, line = [], ""
    for token in tokens:
        if line and font.getlength(line + token.rstrip()) > width:
            lines.append(line.rstrip())
            line = token.lstrip()
        else:
            line += token
    return [*lines, line.rstrip()] if line.strip() else lines


def render(lines: list[str], dpi: int) -> Image.Image:
    size = (round(A4_INCHES[0] * dpi), round(A4_INCHES[1] * dpi))
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, round(POINT_SIZE * dpi / 72))
    y = MARGIN_INCHES * dpi
    for line in lines:
        draw.text((MARGIN_INCHES * dpi, y), line, font=font, fill=0)
        y += POINT_SIZE * 1.6 * dpi / 72
    return image


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """What a cheap scanner or a phone adds: a slight tilt, blur, noise and JPEG artefacts."""
    image = image.rotate(rng.uniform(-1.5, 1.5), resample=Image.Resampling.BICUBIC, fillcolor=255)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    noise = Image.effect_noise(image.size, 18)
    image = Image.blend(image, noise, 0.15)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue()))


def distance(a: str, b: str) -> int:
    """Levenshtein distance, one row at a time."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def accuracy(reference: str, result: str, *, spaces: bool) -> float:
    if spaces:
        reference, result = " ".join(reference.split()), " ".join(result.split())
    else:
        reference, result = "".join(reference.split()), "".join(result.split())
    return 1 - distance(reference, result) / len(reference)


def ocr_file(image: Image.Image, folder: Path, name: str) -> tuple[str, float]:
    path = folder / name
    image.save(path)
    started = time.perf_counter()
    sections = load_document(path, max_bytes=200 * 2**20)
    return "\n".join(s.text for s in sections), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3, help="pages per accuracy set")
    parser.add_argument("--pdf-pages", type=int, default=5, help="pages of the timed scanned PDF")
    args = parser.parse_args()
    import tempfile

    rng = random.Random(17)
    texts = page_texts(args.pages)
    warm = render(["warm up"], 100)  # the OCR engine is built on first use: not timed
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ocr_file(warm, folder, "warm.png")
        print("| set | pages | accuracy (no whitespace) | accuracy (spaces kept) | s / page |")
        print("| --- | ---: | ---: | ---: | ---: |")
        noisy_pages = []
        for name, dpi, noisy in [("clean 300 DPI", 300, False), ("noisy 150 DPI", 150, True)]:
            hits, spaced, seconds = [], [], []
            for number, lines in enumerate(texts):
                image = render(lines, dpi)
                if noisy:
                    image = degrade(image, rng)
                    noisy_pages.append(image)
                result, took = ocr_file(image, folder, f"{dpi}-{number}.png")
                reference = "\n".join(lines)
                hits.append(accuracy(reference, result, spaces=False))
                spaced.append(accuracy(reference, result, spaces=True))
                seconds.append(took)
            print(
                f"| {name} | {len(texts)} | {100 * sum(hits) / len(hits):.2f} % "
                f"| {100 * sum(spaced) / len(spaced):.2f} % | {sum(seconds) / len(seconds):.1f} |"
            )
    pages = [noisy_pages[i % len(noisy_pages)].convert("RGB") for i in range(args.pdf_pages)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    started = time.perf_counter()
    sections = load_pdf(buffer.getvalue(), LoadOptions())
    took = time.perf_counter() - started
    print(
        f"\nscanned PDF, {args.pdf_pages} pages at ocr.dpi = 200: {took:.1f} s, "
        f"{args.pdf_pages / took:.2f} pages/s, {len(sections)} pages with text"
    )


if __name__ == "__main__":
    main()
