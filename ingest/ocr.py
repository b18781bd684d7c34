"""Offline OCR of page images with the PP-OCR Chinese + English models inside RapidOCR's wheel.

The engine is built once per process (about 1.5 s) and shared; its ONNX sessions already use
every core, so calls are serialised rather than run side by side.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from kbqa.ingest.types import LoadError

MAX_PIXELS = 64_000_000
"""Images (and images inside PDF pages) above this are refused: decompression bombs."""
MAX_SIDE = 4000
"""Longest side, in pixels, an image is scaled down to before OCR (a 300-DPI A4 page is 3508)."""

_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
_engine: Any = None
_lock = threading.Lock()


@dataclass(frozen=True)
class _Box:
    """One recognised text box: its text and where it lies on the page, in pixels."""

    text: str
    top: float
    bottom: float
    left: float

    @property
    def middle(self) -> float:
        return (self.top + self.bottom) / 2


def recognize(image: Image.Image) -> str:
    """The text of `image`, lines in reading order (top to bottom, left to right); "" if none."""
    if image.width * image.height > MAX_PIXELS:
        raise LoadError(f"image too large to read: {image.width}×{image.height} pixels")
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])  # [H, W, 3] as OpenCV orders it
    with _lock:
        result, _ = _get_engine()(bgr)
    # A box without a letter or digit is a rule, a bullet or a stain read as "■" or "|".
    boxes = [_box(p, text) for p, text, _score in result or [] if any(c.isalnum() for c in text)]
    return "\n".join(_join(line) for line in _lines(boxes))


def _get_engine() -> Any:
    global _engine
    if _engine is None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise LoadError(
                "OCR needs the rapidocr-onnxruntime package (see scripts/setup.sh)"
            ) from exc
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # "no text detected" is no error
        # Detection on the page scaled to at most 1600 px a side, recognition on crops of the
        # page at up to MAX_SIDE: the stock setting upsizes every image to 736 px on its
        # *short* side, which costs seconds on wide strips of text for nothing. Boxes grown
        # by 2.0 rather than 1.6: with the tighter crops the recogniser dropped the spaces
        # of whole English lines (half of our test lines at 32 px).
        _engine = RapidOCR(
            max_side_len=MAX_SIDE,
            det_limit_type="max",
            det_limit_side_len=1600,
            det_unclip_ratio=2.0,
        )
    return _engine


def _box(points: list[list[float]], text: str) -> _Box:
    ys = [p[1] for p in points]
    xs = [p[0] for p in points]
    return _Box(text=text.strip(), top=min(ys), bottom=max(ys), left=min(xs))


def _lines(boxes: list[_Box]) -> list[list[_Box]]:
    """Boxes grouped into lines: a box whose middle lies within a line's height joins it.

    The detector splits one printed line into several boxes where words stand apart; taken
    in plain top-to-bottom order, a box a pixel higher on the right would come first.
    """
    lines: list[list[_Box]] = []
    for box in sorted(boxes, key=lambda b: b.middle):
        line = lines[-1] if lines else None
        if line is not None:
            top = min(b.top for b in line)
            bottom = max(b.bottom for b in line)
            if top <= box.middle <= bottom:
                line.append(box)
                continue
        lines.append([box])
    return [sorted(line, key=lambda b: b.left) for line in lines]


def _join(line: list[_Box]) -> str:
    """Boxes of one line: no space between two Chinese characters, a space elsewhere."""
    text = line[0].text
    for box in line[1:]:
        glue = "" if _CJK.match(text[-1]) and _CJK.match(box.text[0]) else " "
        text += glue + box.text
    return text
