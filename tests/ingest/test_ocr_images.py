"""Images read by OCR: text we draw with a CJK font comes back in reading order; bad images fail
with one clear line."""

from __future__ import annotations

import io

import pytest
from ingest_documents import error_of, load
from ocr_documents import FONT_PATH, image_bytes, text_image
from PIL import Image, ImageDraw, ImageFont

from kbqa.ingest.types import LoadOptions, Section

LINES = ["扫描件里的知识库问答。", "Scanned pages answer 42 questions."]


@pytest.mark.parametrize(("name", "fmt"), [("scan.png", "PNG"), ("photo.JPG", "JPEG")])
def test_chinese_and_english_lines_in_order(write, name: str, fmt: str) -> None:
    path = write(name, image_bytes(text_image(LINES), fmt))
    assert load(path) == [Section("\n".join(LINES))]


@pytest.mark.parametrize(("name", "fmt"), [("a.bmp", "BMP"), ("a.webp", "WEBP")])
def test_other_image_formats(write, name: str, fmt: str) -> None:
    path = write(name, image_bytes(text_image(["Aurora 6 GB"]), fmt))
    assert load(path) == [Section("Aurora 6 GB")]


def test_boxes_on_one_line_are_joined_left_to_right(write) -> None:
    """Words far apart on one line (the right one a little higher) stay on that line, in order."""
    font = ImageFont.truetype(str(FONT_PATH), 32)
    image = Image.new("RGB", (900, 130), "white")
    draw = ImageDraw.Draw(image)
    draw.text((16, 20), "Left side", font=font, fill="black")
    draw.text((560, 14), "右边的字", font=font, fill="black")
    draw.text((16, 80), "Next line", font=font, fill="black")
    path = write("columns.png", image_bytes(image, "PNG"))
    assert load(path) == [Section("Left side 右边的字\nNext line")]


def test_multi_page_tiff_keeps_page_numbers_and_reports_pages(write) -> None:
    first, second = text_image(["Page one"]), text_image(["第二页"])
    buffer = io.BytesIO()
    first.save(buffer, format="TIFF", save_all=True, append_images=[second])
    pages: list[tuple[int, int]] = []
    options = LoadOptions(on_page=lambda done, total: pages.append((done, total)))
    sections = load(write("pages.tiff", buffer.getvalue()), options)
    assert sections == [Section("Page one", page=1), Section("第二页", page=2)]
    assert pages == [(1, 2), (2, 2)]


def test_image_without_text(write) -> None:
    path = write("blank.png", image_bytes(Image.new("RGB", (200, 100), "white"), "PNG"))
    assert error_of(path) == "no text found in the image (OCR)"


def test_ocr_turned_off(write) -> None:
    path = write("scan.png", image_bytes(text_image(["x"]), "PNG"))
    expected = "images are read by OCR, which is turned off (ocr.enabled = false)"
    assert error_of(path, LoadOptions(ocr=False)) == expected


def test_decompression_bomb_is_refused_from_its_header(write) -> None:
    # 81 megapixels of one colour compress to a few kilobytes.
    path = write("bomb.png", image_bytes(Image.new("1", (9000, 9000)), "PNG"))
    assert path.stat().st_size < 100_000
    assert error_of(path) == (
        "image has too many pixels, over the 64,000,000 pixel limit (ingest.max_image_pixels): "
        "a decompression bomb?"
    )


def test_empty_truncated_and_fake_images(write) -> None:
    data = image_bytes(text_image(LINES), "PNG")
    assert error_of(write("empty.png", b"")) == "empty file"
    assert error_of(write("cut.png", data[: len(data) // 2])).startswith(
        "truncated or corrupt image: "
    )
    fake = error_of(write("fake.jpg", b"this is not a picture"))
    assert fake == "not a readable image: corrupt or of an unknown format"
