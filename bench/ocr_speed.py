"""Which OCR settings make a scanned page faster without losing accuracy (bench/ocr_bench.py's set).

    .venv/bin/python bench/ocr_speed.py [--pages 2] [--pdf-pages 20] [--final dpi,det,cls]

For each variant — render DPI (ocr.dpi), RapidOCR's detection size (det_limit_side_len, the page
scaled so its longest side is at most this) and the text-direction classifier (use_cls) — the
same pages as bench/ocr_bench.py (clean 300-DPI and noisy 150-DPI images of text we wrote) are
read for accuracy, and an image-only PDF of the noisy pages is read through `load_pdf` at the
variant's DPI for seconds a page. Variants run interleaved page by page, so a change in the
machine's load during the run hits them alike. Then `--pdf-pages` pages are timed with the
`--final` variant: the issue's "20-page scanned PDF in under 2 minutes".
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ocr_bench import accuracy, degrade, ocr_file, page_texts, render

import kbqa.ingest.ocr as ocr
from kbqa.ingest.loaders.pdf import load_pdf
from kbqa.ingest.types import LoadOptions

VARIANTS = [(200, 1600, True), (200, 1600, False), (200, 1280, False), (150, 1280, False)]


class _Engine:
    """RapidOCR with the variant's detection size and classifier switch, as kbqa.ingest.ocr calls
    it."""

    def __init__(self, det: int, cls: bool) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self._engine = RapidOCR(
            max_side_len=ocr.MAX_SIDE,
            det_limit_type="max",
            det_limit_side_len=det,
            det_unclip_ratio=2.0,
        )
        self._cls = cls

    def __call__(self, image: Any) -> Any:
        return self._engine(image, use_cls=self._cls)


def pdf_of(pages: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    rgb = [p.convert("RGB") for p in pages]
    rgb[0].save(buffer, format="PDF", save_all=True, append_images=rgb[1:], resolution=150)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2)
    parser.add_argument("--pdf-pages", type=int, default=20)
    parser.add_argument("--final", default="150,1280,0", help="dpi,det,cls of the long run")
    args = parser.parse_args()
    rng = random.Random(17)
    texts = page_texts(args.pages)
    clean = [render(lines, 300) for lines in texts]
    noisy = [degrade(render(lines, 150), rng) for lines in texts]
    engines = {(det, cls): _Engine(det, cls) for _, det, cls in VARIANTS}
    stats: dict[tuple[int, int, bool], dict[str, list[float]]] = {
        v: {"clean": [], "noisy": [], "seconds": []} for v in VARIANTS
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for engine in engines.values():  # sessions warm (first call allocates)
            engine(__import__("numpy").zeros((64, 64, 3), dtype="uint8"))
        for number, lines in enumerate(texts):
            reference = "\n".join(lines)
            for variant in VARIANTS:
                dpi, det, cls = variant
                ocr._engine = engines[(det, cls)]
                for name, image in (("clean", clean[number]), ("noisy", noisy[number])):
                    text, _ = ocr_file(image, folder, f"{name}{number}.png")
                    stats[variant][name].append(accuracy(reference, text, spaces=False))
                started = time.perf_counter()
                load_pdf(pdf_of([noisy[number]]), LoadOptions(ocr_dpi=dpi))
                stats[variant]["seconds"].append(time.perf_counter() - started)
    print("| ocr.dpi | det limit | cls | clean 300 DPI | noisy 150 DPI | s / PDF page |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for (dpi, det, cls), s in stats.items():
        mean = {k: sum(v) / len(v) for k, v in s.items()}
        print(
            f"| {dpi} | {det} | {'on' if cls else 'off'} | {100 * mean['clean']:.2f} % "
            f"| {100 * mean['noisy']:.2f} % | {mean['seconds']:.1f} |"
        )
    dpi, det, cls = (int(x) for x in args.final.split(","))
    ocr._engine = engines.get((det, bool(cls))) or _Engine(det, bool(cls))
    pages = [noisy[i % len(noisy)] for i in range(args.pdf_pages)]
    started = time.perf_counter()
    sections = load_pdf(pdf_of(pages), LoadOptions(ocr_dpi=dpi))
    took = time.perf_counter() - started
    print(
        f"\n{args.pdf_pages}-page scanned PDF at ocr.dpi {dpi}, det {det}, cls "
        f"{'on' if cls else 'off'}: {took:.1f} s ({args.pdf_pages / took:.2f} pages/s), "
        f"{len(sections)} pages with text"
    )


if __name__ == "__main__":
    main()
