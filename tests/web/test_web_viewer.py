"""Evidence in the web page and the source viewer, in a real Chromium against a real server.

The answers come from the real chain (retrieval, evidence alignment) over documents written
here; the expected marks are computed in Python from the same answer's JSON, slicing by code
points, so the page's conversion to UTF-16 is what is checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from web_helpers import (
    API_KEY,
    Server,
    ask,
    expect,
    pick_only,
    seed_kb,
    start_server,
)

from kbqa.ingest.pipeline import ingest_paths
from kbqa.settings import load_settings
from tests.ingest.ingest_documents import pdf_bytes
from tests.server.server_helpers import wait_for_job

pytestmark = pytest.mark.browser

QUESTION = "How heavy is the Zephyr-9 widget?"
FILLER = (
    "Bed {n}: tomato seedlings want a sunny windowsill, water every second morning and a larger "
    "pot once their third leaf opens. Basil likes the same light but less water; mint spreads "
    "wherever it is allowed to, so it is better kept in pot {n} of its own."
)
SPEC = "<b>bold</b> 😀 𠀀 intro line. The Zephyr-9 widget weighs 412 grams. It is painted teal."
"""Markup, an emoji and a CJK Extension B character (both two UTF-16 units) before the fact."""
DOCUMENT = (
    "# Garden notes\n\n"
    + "\n\n".join(FILLER.format(n=n) for n in range(6))
    + "\n\n# Zephyr specifications\n\n"
    + SPEC
    + "\n\n# More garden notes\n\n"
    + "\n\n".join(FILLER.format(n=n) for n in range(6, 12))
    + "\n"
)
NAME = "zephyr-emoji.md"


def answer_json(url: str, kb: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        response = client.post("/v1/ask", json={"question": QUESTION, "kb": kb})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
    return body


def expected_marks(source: dict[str, Any]) -> list[str]:
    """The evidence spans sliced in code points, overlapping ones merged (as the page does)."""
    spans = sorted((e["start"], e["end"]) for e in source["evidence"])
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [source["text"][start:end] for start, end in merged]


def shot(page: Any, folder: Path, name: str, target: Any = None) -> Path:
    path = folder / f"{name}.png"
    (target or page).screenshot(path=str(path))
    assert path.stat().st_size > 1000, f"{path} is empty"
    return path


def test_evidence_marked_in_sources_and_viewer(
    server: Server, new_page: Any, tmp_path: Path
) -> None:
    seed_kb(server, "web-viewer", {NAME: DOCUMENT})
    expected = answer_json(server.url, "web-viewer")
    first = expected["sources"][0]
    assert first["source"] == NAME and "412 grams" in first["text"]
    marks = expected_marks(first)
    assert any("412 grams" in m for m in marks), marks
    before = first["text"][: min(e["start"] for e in first["evidence"])]
    assert any(ord(c) > 0xFFFF for c in before), "the test needs astral characters before it"

    page = new_page()
    page.goto(server.url)
    pick_only(page, "web-viewer")
    turn = ask(page, QUESTION)

    # The sources' excerpts show the evidence marked inside the source text.
    turn.locator(".sources .source-toggle").first.click()
    excerpt = turn.locator(".excerpt").first
    expect(excerpt.locator("mark.evidence")).to_have_text(marks)
    expect(excerpt.locator(".excerpt-text")).to_contain_text("<b>bold</b> 😀 𠀀 intro line.")
    assert excerpt.locator(".excerpt-text b").count() == 0
    shot(page, tmp_path, "sources-evidence", turn)

    # A citation opens the viewer at the cited chunk, evidence marked, the rest of the text around.
    citation = turn.locator(".answer-body button.cite").first
    citation.click()
    dialog = page.get_by_role("dialog", name=NAME)
    expect(dialog).to_be_visible()
    cited = dialog.locator(".viewer-chunk.cited")
    expect(cited).to_have_attribute("data-chunk-id", first["chunk_id"])
    expect(cited).to_be_in_viewport()
    expect(cited).to_be_focused()
    expect(cited.locator("mark.evidence")).to_have_text(marks)
    with httpx.Client(base_url=server.url) as client:
        detail = client.get(f"/v1/kbs/web-viewer/documents/{first['doc_id']}").json()
    expect(dialog.locator(".viewer-chunk")).to_have_count(len(detail["chunks"]))
    assert len(detail["chunks"]) > 2, "the cited chunk should not be the only one"
    expect(dialog.locator(".viewer-group h3")).to_contain_text(
        ["Garden notes", "Zephyr specifications", "More garden notes"]
    )
    assert dialog.locator("b, img, script").count() == 0
    # The sentences ingest repeats at the start of a chunk (its overlap) are shown once.
    shown = dialog.locator("#viewer-body").inner_text()
    assert [shown.count(f"in pot {n} of its own.") for n in range(12)] == [1] * 12
    shot(page, tmp_path, "viewer-evidence")

    # The original: opened in a new tab as inert text, and downloaded byte for byte.
    with page.expect_popup() as popup_info:
        dialog.get_by_role("button", name="Open original").click()
    popup = popup_info.value
    popup.wait_for_url("blob:**")
    expect(popup.locator("body")).to_contain_text("<b>bold</b> 😀 𠀀 intro line.")
    assert popup.locator("b").count() == 0
    with page.expect_download() as download_info:
        dialog.get_by_role("button", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == NAME
    assert Path(download.path()).read_text(encoding="utf-8") == DOCUMENT

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(citation).to_be_focused()

    # Manage lists the document with a View button: the viewer opens at its beginning.
    page.get_by_role("tab", name="Manage").click()
    page.get_by_role("button", name=re.compile("^web-viewer")).click()
    page.get_by_role("button", name=f"View {NAME}").click()
    expect(dialog.locator(".viewer-chunk")).to_have_count(len(detail["chunks"]))
    expect(dialog.locator(".viewer-chunk.cited")).to_have_count(0)
    expect(dialog.locator("#viewer-meta")).to_contain_text(f"{len(detail['chunks'])} chunks")
    dialog.get_by_role("button", name="Close").click()

    # A document removed since the answer: the viewer says so, nothing breaks.
    with httpx.Client(base_url=server.url) as client:
        removed = client.delete(f"/v1/kbs/web-viewer/documents/{first['doc_id']}")
        assert removed.status_code == 200
    page.get_by_role("tab", name="Chat").click()
    citation.click()
    expect(page.locator("#viewer-status")).to_contain_text(
        "Could not open the document: no document"
    )
    expect(dialog.locator(".viewer-chunk")).to_have_count(0)
    expect(dialog.get_by_role("button", name="Open original")).to_be_disabled()


def test_pdf_is_grouped_by_page_and_opens_at_the_cited_page(server: Server, new_page: Any) -> None:
    pages = [
        "Tomato seedlings want a sunny windowsill and water every second morning.",
        "The Zephyr-9 widget weighs 412 grams and is painted teal.",
        "Mint spreads wherever it is allowed to, so it gets a pot of its own.",
    ]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v1/kbs", json={"name": "web-pdf"}).status_code == 201
        files = [("files", ("specs.pdf", pdf_bytes([[line] for line in pages]), "application/pdf"))]
        job_id = client.post("/v1/kbs/web-pdf/documents", files=files).json()["job_id"]
        job = wait_for_job(client, job_id)
        assert job["state"] == "done" and job["result"]["added"] == 1, job
    page = new_page()
    page.goto(server.url)
    pick_only(page, "web-pdf")
    turn = ask(page, QUESTION)
    turn.locator(".answer-body button.cite").first.click()
    dialog = page.get_by_role("dialog", name="specs.pdf")
    expect(dialog.locator(".viewer-group h3")).to_have_text(["Page 1", "Page 2", "Page 3"])
    cited_group = dialog.locator(".viewer-group").filter(has=page.locator(".viewer-chunk.cited"))
    expect(cited_group.locator("h3")).to_have_text("Page 2")
    expect(cited_group.locator("mark.evidence").first).to_contain_text("412 grams")


def test_viewer_behind_an_api_key(tmp_path: Path, new_page: Any) -> None:
    home = tmp_path / "home"
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / NAME).write_text(DOCUMENT, encoding="utf-8")
    ingest_paths(load_settings(home, overrides={"server": {"api_key": ""}}), "keyed", [folder])
    keyed = start_server(home, api_key=API_KEY)
    try:
        expected = answer_json(keyed.url, "keyed", {"Authorization": f"Bearer {API_KEY}"})
        page = new_page()
        page.goto(keyed.url)
        page.fill("#key-input", API_KEY)
        page.get_by_role("button", name="Continue").click()
        pick_only(page, "keyed")
        turn = ask(page, QUESTION)
        turn.locator(".answer-body button.cite").first.click()
        cited = page.locator("#viewer-dialog .viewer-chunk.cited")
        expect(cited.locator("mark.evidence")).to_have_text(expected_marks(expected["sources"][0]))
        with page.expect_popup() as popup_info:
            page.get_by_role("button", name="Open original").click()
        popup = popup_info.value
        popup.wait_for_url("blob:**")
        expect(popup.locator("body")).to_contain_text("The Zephyr-9 widget weighs 412 grams.")
    finally:
        keyed.stop()


def test_evidence_offsets_and_answer_modes_in_the_page(server: Server, new_page: Any) -> None:
    """The page's own modules: code point offsets, stale offsets, merging; extracted answers."""
    text = "<i>x</i> 😀𠀀 café. Target sentence here. Tail 🎉 end."
    target = text.index("Target sentence here.")
    tail = text.index("Tail")
    spans = [
        {"start": target, "end": target + 21, "text": "Target sentence here.", "basis": "answer"},
        # Offsets from a different version of the text: found again by its text.
        {"start": 0, "end": 4, "text": "Tail 🎉 end.", "basis": "question", "score": 0.2},
        # Out of range and without text: dropped.
        {"start": 200, "end": 210, "basis": "answer"},
        # Overlapping the first span: merged into it.
        {"start": target + 7, "end": tail - 1, "text": text[target + 7 : tail - 1], "score": 0.1},
    ]
    page = new_page()
    page.goto(server.url)
    result = page.evaluate(
        """async ([text, spans]) => {
            const { highlighted } = await import("/static/evidence.js");
            const box = document.createElement("p");
            box.append(...highlighted(text, spans));
            const marks = [...box.querySelectorAll("mark")];
            const { AnswerView } = await import("/static/answer.js");
            const view = new AnswerView("q", ["web"]);
            document.body.append(view.element);
            view.appendToken("streamed text that the server replaced");
            view.finish({
                answer: "Quoted: the widget weighs 412 grams [1].",
                refused: false,
                answer_mode: "extracted",
                generated: "<script>window.__xss = 1</script> invented https://example.com/x",
                sources: [{ index: 1, chunk_id: "c", doc_id: "d", source: "a.md", text,
                            evidence: spans, score: 0.5 }],
            });
            return {
                marks: marks.map((m) => [m.textContent, m.className]),
                text: box.textContent,
                html: box.innerHTML,
                body: view.body.textContent,
                summary: view.mode.querySelector("summary").textContent,
                generated: view.mode.querySelector("details p").textContent,
                folded: !view.mode.querySelector("details").open,
                scripts: view.element.querySelectorAll("script").length,
                excerptMarks: view.element.querySelectorAll(".excerpt mark").length,
            };
        }""",
        [text, spans],
    )
    assert result["text"] == text
    assert result["marks"] == [
        [text[target : tail - 1], "evidence basis-answer"],
        ["Tail 🎉 end.", "evidence basis-question"],
    ]
    assert "&lt;i&gt;x&lt;/i&gt;" in result["html"]
    assert result["body"] == "Quoted: the widget weighs 412 grams [1]."
    assert result["summary"] == "The model's own answer (not used)"
    assert result["generated"].startswith("<script>window.__xss = 1</script>")
    assert result["folded"] and result["scripts"] == 0 and result["excerptMarks"] == 2
    assert page.evaluate("window.__xss") is None
