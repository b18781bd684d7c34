"""The page names the model that answers: a P-tuned ChatGLM2 under its own name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_helpers import expect, screenshot

from tests.ptuning_support import SERVED_NAME, serve_ptuned
from tests.server.server_helpers import LiveServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def ptuned(tmp_path_factory: pytest.TempPathFactory, sp_model_path: Path) -> Iterator[LiveServer]:
    server = serve_ptuned(tmp_path_factory, sp_model_path)
    yield server
    server.stop()


def test_the_model_list_shows_the_ptuned_model(new_page: Any, ptuned: LiveServer) -> None:
    page = new_page()
    page.goto(ptuned.url)
    expect(page.locator("#model-list")).to_have_text(SERVED_NAME)
    screenshot(page, "model-list-ptuned")
    page.locator("#lang-toggle").click()
    expect(page.locator("[data-i18n='chat.model']")).to_have_text("模型")
