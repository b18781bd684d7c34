"""Auto answer mode in the page: an answer the sources do not support is replaced by a quote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_helpers import TABLE_WORD, Server, ask, expect, pick_only, seed_kb, start_server, warm_up

pytestmark = pytest.mark.browser

WIDGETS = "# Widgets\n\nThe Zephyr-9 widget weighs 412 grams. The Quasar lamp weighs 97 grams.\n"


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("auto-home"), answer_mode="auto")
    warm_up(running)
    yield running
    running.stop()


def test_an_unsupported_answer_is_replaced_by_a_quote(
    auto_server: Server, new_page: Any, tmp_path: Path
) -> None:
    seed_kb(auto_server, "auto-widgets", {"widgets.md": WIDGETS})
    page = new_page()
    page.goto(auto_server.url)
    pick_only(page, "auto-widgets")
    # The scripted model answers this with a table of invented widgets and links.
    turn = ask(page, f"{TABLE_WORD} the Zephyr-9 widget weight")
    body = turn.locator(".answer-body")
    expect(body).to_contain_text("Quoted from the documents")
    expect(body).to_contain_text("412 grams")
    expect(body.locator("table")).to_have_count(0)  # the streamed table is gone
    # The model's dropped text stays available, folded, as plain text.
    folded = turn.locator("details")
    expect(folded).to_have_count(1)
    assert "Supplier reference code" in (folded.text_content() or "")
    # The quoted sentence is marked as evidence in its source.
    expect(turn.locator("mark").first).to_contain_text("412 grams")
    page.screenshot(path=str(tmp_path / "auto.png"), full_page=True)
