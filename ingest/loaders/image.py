"""Images (.png .jpg .tif .bmp .webp) read by OCR; each frame of a multi-page TIFF is a page."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageSequence, UnidentifiedImageError

from kbqa.ingest.limits import pixels_error
from kbqa.ingest.ocr import recognize
from kbqa.ingest.types import LoadError, LoadOptions, Section


def load_image(data: bytes, options: LoadOptions) -> list[Section]:
    if not options.ocr:
        raise LoadError("images are read by OCR, which is turned off (ocr.enabled = false)")
    limits = options.limits
    # Set, not left to Pillow's default (89 M pixels): its check runs on the header, before
    # any pixel is inflated, so a bomb costs nothing. Per process, and every image sets it.
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its own limit and twice it; any bomb is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise pixels_error(limits) from exc
    except UnidentifiedImageError as exc:
        raise LoadError("not a readable image: corrupt or of an unknown format") from exc
    with image:
        if image.width * image.height > limits.max_image_pixels:
            raise pixels_error(limits, image.size)
        frames = getattr(image, "n_frames", 1)
        total = min(frames, options.ocr_max_pages)
        sections: list[Section] = []
        try:
            for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
                if number > total:
                    break
                frame.load()
                text = recognize(frame)
                options.page_done(number, total)
                if text:
                    sections.append(Section(text=text, page=number if frames > 1 else None))
        except OSError as exc:  # Pillow's "image file is truncated", broken compressed data
            raise LoadError(f"truncated or corrupt image: {exc}") from exc
    if not sections:
        raise LoadError("no text found in the image (OCR)")
    return sections
