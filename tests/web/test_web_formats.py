"""The manage view offers exactly the types the server reads, long-tail formats included."""

from __future__ import annotations

from typing import Any

import pytest
from web_helpers import Server, expect

from kbqa.ingest.loaders import LONG_TAIL_EXTENSIONS, SUPPORTED_EXTENSIONS


@pytest.mark.skipif(not LONG_TAIL_EXTENSIONS, reason="the unstructured extra is not installed")
def test_the_page_lists_the_servers_formats(server: Server, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{server.url}/#manage")
    formats = page.locator("#formats")
    for extension in sorted(LONG_TAIL_EXTENSIONS):
        expect(formats).to_contain_text(extension)
    accept = page.locator("#file-input").get_attribute("accept") or ""
    assert set(accept.split(",")) == SUPPORTED_EXTENSIONS
