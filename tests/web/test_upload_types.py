"""The web page refuses before sending exactly the files the server's loaders refuse."""

from __future__ import annotations

import re
from pathlib import Path

import kbqa.server
from kbqa.ingest.loaders import LONG_TAIL_EXTENSIONS, SUPPORTED_EXTENSIONS

UPLOAD_JS = Path(kbqa.server.__file__).parent / "static" / "upload.js"


def test_the_pages_extension_list_is_the_loaders() -> None:
    source = UPLOAD_JS.read_text(encoding="utf-8")
    block = re.search(r"SUPPORTED_EXTENSIONS = \[(.*?)\];", source, re.DOTALL)
    assert block is not None
    listed = re.findall(r'"(\.[a-z0-9]+)"', block.group(1))
    assert len(listed) == len(set(listed))
    assert set(listed) == SUPPORTED_EXTENSIONS - LONG_TAIL_EXTENSIONS  # the rest from /healthz
