"""The web page at GET / in a real headless Chromium against a real server (see conftest.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from web_helpers import (
    API_KEY,
    JOB_TIMEOUT_MS,
    PHONE,
    SLOW_SHOWN,
    SLOW_WORD,
    Server,
    ask,
    expect,
    no_horizontal_overflow,
    pick_only,
    screenshot,
    seed_kb,
    start_server,
)

pytestmark = pytest.mark.browser

# Written for these tests.
ZEPHYR = (
    "# Zephyr-9 widget\n\nThe Zephyr-9 widget weighs 412 grams and is painted teal.\n\n"
    "## Battery\n\nThe Zephyr-9 battery lasts 31 hours on a single charge.\n"
)
BRIDGE = "# 青石桥\n\n青石桥建于一八九零年，全长七十二米，横跨清河。\n"
HOSTILE_NAME = "<img src=x onerror=window.__xss='name'>.txt"
HOSTILE_TEXT = (
    "Quasar lamp notes.\n"
    "<img src=x onerror=\"window.__xss='document'\">\n"
    "<script>window.__xss='document-script'</script>\n"
    "The Quasar lamp glows violet and runs on 12 volts.\n"
)


# -- helpers ----------------------------------------------------------------------------------


def create_kb(page: Any, name: str) -> None:
    page.fill("#new-kb-name", name)
    page.get_by_role("button", name=re.compile("^(Create|新建)$")).click()
    expect(page.locator("#kb-list .kb-pick[aria-current=true] .kb-name")).to_have_text(name)


def wait_for_upload(page: Any) -> Any:
    upload = page.locator("#uploads .upload").first
    expect(upload).to_have_class(re.compile(r"\bfinished\b"), timeout=JOB_TIMEOUT_MS)
    return upload


def drop_files(page: Any, selector: str, files: dict[str, str]) -> None:
    """Drag and drop `files` onto `selector`, as a user dropping them from a file manager."""
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, text] of Object.entries(files)) {
                transfer.items.add(new File([text], name, { type: "text/plain" }));
            }
            return transfer;
        }""",
        files,
    )
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(selector, event, {"dataTransfer": transfer})


# -- tests ------------------------------------------------------------------------------------


def test_upload_ask_cite_and_delete(server: Server, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{server.url}/#manage")
    create_kb(page, "web-main")
    page.set_input_files(
        "#file-input",
        files=[{"name": "zephyr.md", "mimeType": "text/markdown", "buffer": ZEPHYR.encode()}],
    )
    upload = wait_for_upload(page)
    expect(upload.locator(".upload-status")).to_contain_text("1 added")
    expect(page.locator("#doc-list .doc-name")).to_have_text(["zephyr.md"])
    screenshot(page, "manage-uploaded")

    page.get_by_role("tab", name="Chat").click()
    pick_only(page, "web-main")
    with page.expect_response("**/v1/ask") as answered:
        turn = ask(page, "How much does the Zephyr-9 widget weigh?")
    assert answered.value.headers["content-type"].startswith("text/event-stream")
    expect(turn.locator(".question")).to_contain_text("How much does the Zephyr-9 widget weigh?")
    expect(turn.locator(".sources .source-toggle").first).to_contain_text("[1] zephyr.md")
    body = turn.locator(".answer-body")
    expect(body.locator("strong")).to_have_text("412 grams")  # Markdown rendered
    screenshot(page, "chat-answer")

    excerpt = turn.locator(".excerpt").first
    expect(excerpt).to_be_hidden()
    toggle = turn.locator(".sources .source-toggle").first
    toggle.click()
    expect(excerpt).to_be_visible()
    expect(excerpt.locator(".excerpt-file")).to_have_text("[1] zephyr.md")
    expect(excerpt.locator(".excerpt-text")).to_contain_text("412 grams")
    expect(excerpt.locator("mark.evidence").first).to_contain_text("412 grams")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    screenshot(page, "chat-citation")

    citation = body.get_by_role("button", name=re.compile(r"^Source 1: zephyr\.md$"))
    citation.click()
    viewer = page.get_by_role("dialog", name="zephyr.md")
    expect(viewer.locator(".viewer-chunk.cited mark.evidence").first).to_contain_text("412 grams")
    viewer.get_by_role("button", name="Close").click()
    expect(viewer).to_be_hidden()
    expect(citation).to_be_focused()

    page.get_by_role("tab", name="Manage").click()
    page.get_by_role("button", name="Delete zephyr.md").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("zephyr.md")
    screenshot(page, "confirm-delete")
    dialog.get_by_role("button", name="Delete").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#doc-list .doc-item")).to_have_count(0)
    expect(page.locator("#docs-status")).to_have_text("No documents yet. Upload some.")


def test_markup_in_documents_and_answers_stays_text(server: Server, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{server.url}/#manage")
    create_kb(page, "web-xss")
    dropped = {HOSTILE_NAME: HOSTILE_TEXT, "broken.pdf": "not a PDF at all", "tool.exe": "MZ"}
    drop_files(page, "#drop-zone", dropped)
    upload = wait_for_upload(page)
    expect(upload.locator(".upload-status")).to_contain_text("1 added")
    problems = upload.locator(".upload-problems li")
    expect(problems).to_have_count(2)  # each file that did not make it, and why
    expect(problems.filter(has_text="tool.exe")).to_have_text(
        "tool.exe: unsupported file type (not uploaded)"
    )
    expect(problems.filter(has_text="broken.pdf:")).to_have_count(1)
    expect(page.locator("#doc-list .doc-name")).to_have_text([HOSTILE_NAME])
    screenshot(page, "manage-dropped-with-errors")

    page.get_by_role("tab", name="Chat").click()
    pick_only(page, "web-xss")
    turn = ask(page, "What colour does the Quasar lamp glow?")
    # The model's answer is shown, or folded under an answer quoted from the document instead.
    expect(turn.locator(".answer")).to_contain_text("<img src=x onerror=")
    expect(turn.locator(".answer")).to_contain_text("<script>window.__xss='answer-script'")
    turn.locator(".sources .source-toggle").first.click()
    excerpt = turn.locator(".excerpt").first
    expect(excerpt.locator(".excerpt-file")).to_have_text(f"[1] {HOSTILE_NAME}")
    expect(excerpt.locator(".excerpt-text")).to_contain_text(
        "<script>window.__xss='document-script'</script>"
    )
    screenshot(page, "chat-markup-as-text")

    turn.locator("button.cite").first.click()
    viewer = page.locator("#viewer-dialog")
    expect(viewer.locator("#viewer-title")).to_have_text(HOSTILE_NAME)
    expect(viewer.locator(".viewer-chunk.cited")).to_contain_text(
        "<script>window.__xss='document-script'</script>"
    )
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main script, main iframe").count() == 0
    assert viewer.locator("img, script, iframe").count() == 0


def test_api_key_is_asked_once_per_session(tmp_path: Path, new_page: Any) -> None:
    keyed = start_server(tmp_path / "home", api_key=API_KEY)
    try:
        page = new_page()
        page.goto(keyed.url)
        dialog = page.get_by_role("dialog", name="API key required")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-input")).to_be_focused()
        screenshot(page, "api-key-prompt")

        page.fill("#key-input", "wrong-key")
        page.press("#key-input", "Enter")
        expect(page.locator("#key-error")).to_have_text("That key was refused. Try again.")
        page.fill("#key-input", API_KEY)
        page.get_by_role("button", name="Continue").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#kb-choices")).to_contain_text("No knowledge bases yet")

        page.get_by_role("tab", name="Manage").click()
        create_kb(page, "keyed")  # later requests carry the key without asking
        page.reload()
        expect(page.locator('#kb-choices input[value="keyed"]')).to_be_attached()
        expect(dialog).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('kbqa.apiKey')") == API_KEY
    finally:
        keyed.stop()


def test_kb_names_checked_and_deletion_confirmed(server: Server, new_page: Any) -> None:
    page = new_page()
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(f"{server.url}/#manage")

    error = page.locator("#new-kb-error")
    for name, message in (
        ("bad name!", "Only letters, digits, _ - . are allowed (found “ ” “!”)."),
        (".hidden", "A name must not start with a dot."),
        ("x" * 65, "At most 64 characters."),
    ):
        page.fill("#new-kb-name", name)
        page.press("#new-kb-name", "Enter")
        expect(error).to_have_text(message)
        expect(page.locator("#new-kb-name")).to_have_attribute("aria-invalid", "true")
    assert posts == []  # refused before any request

    create_kb(page, "项目-a.1")
    expect(page.locator('#kb-choices input[value="项目-a.1"]')).to_be_attached()
    page.fill("#new-kb-name", "项目-a.1")
    page.press("#new-kb-name", "Enter")
    expect(error).to_contain_text("already exists")  # the server's 409, shown as sent

    delete = page.get_by_role("button", name="Delete knowledge base 项目-a.1")
    dialog = page.get_by_role("dialog")
    delete.click()
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(delete).to_be_focused()  # focus returns to the button that opened the dialog
    delete.click()
    page.keyboard.press("Enter")  # Enter on the focused Cancel keeps the KB
    expect(dialog).to_be_hidden()
    expect(delete).to_be_visible()
    delete.click()
    dialog.get_by_role("button", name="Delete").click()
    expect(delete).to_have_count(0)
    expect(page.locator('#kb-choices input[value="项目-a.1"]')).to_have_count(0)


def test_keyboard_stop_history_and_clear(server: Server, new_page: Any) -> None:
    seed_kb(server, "web-chat", {"zephyr.md": ZEPHYR})
    page = new_page()
    asks: list[dict[str, Any]] = []
    page.on("request", lambda r: asks.append(r.post_data_json) if "/v1/ask" in r.url else None)
    page.goto(server.url)
    pick_only(page, "web-chat")

    question = page.locator("#question")
    question.click()
    question.type(f"Tell me {SLOW_WORD}")
    question.press("Shift+Enter")
    question.type("about the Zephyr-9 widget weight")
    assert question.input_value() == f"Tell me {SLOW_WORD}\nabout the Zephyr-9 widget weight"
    assert asks == []
    question.press("Enter")
    body = page.locator("#conversation .turn .answer-body").last
    # The model holds its answer after SLOW_SHOWN words until released: part of the answer is
    # shown while it is still being written, for as long as the test needs.
    expect(body).to_contain_text(f"word{SLOW_SHOWN - 1}")
    expect(body).to_have_attribute("aria-busy", "true")
    page.get_by_role("button", name="Stop").click()
    expect(body).to_have_attribute("aria-busy", "false")
    expect(page.locator("#conversation .turn .note").last).to_have_text("Stopped.")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    produced = server.model.produced
    server.release_stopped_answer()
    assert server.model.produced <= produced + 1, "the stopped answer ran on past its next word"
    assert f"word{SLOW_SHOWN}" not in body.inner_text()

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#conversation .turn")).to_have_count(0)
    expect(page.locator("#chat-empty")).to_be_visible()

    first = ask(page, "How much does the Zephyr-9 widget weigh?")
    first_answer = first.locator(".answer-body").inner_text()
    ask(page, "What colour is it painted?")
    assert asks[-1]["kb"] == ["web-chat"] and asks[-1]["stream"] is True
    [(q, a)] = asks[-1]["history"]  # the stopped answer is not history
    assert q == "How much does the Zephyr-9 widget weigh?"
    assert "412 grams" in a and a.startswith("The Zephyr-9 widget weighs")
    assert "412 grams" in first_answer

    page.reload()  # the conversation is kept for the tab's session
    expect(page.locator("#conversation .turn")).to_have_count(2)
    stored = json.loads(page.evaluate("sessionStorage.getItem('kbqa.turns')"))
    assert [turn["question"] for turn in stored] == [q, "What colour is it painted?"]
    screenshot(page, "chat-history")


def test_phone_width_in_chinese(server: Server, new_page: Any) -> None:
    seed_kb(server, "手机", {"bridge.md": BRIDGE, "zephyr.md": ZEPHYR})
    page = new_page(viewport=PHONE, locale="zh-CN")
    page.goto(server.url)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.get_by_role("tab", name="问答")).to_have_attribute("aria-selected", "true")
    pick_only(page, "手机")
    turn = ask(page, "Zephyr-9 有多重？")
    turn.locator(".sources .source-toggle").first.click()
    expect(turn.locator(".excerpt").first).to_be_visible()
    assert no_horizontal_overflow(page)
    screenshot(page, "phone-chat-zh")
    turn.locator(".excerpt .open-viewer").first.click()
    viewer = page.get_by_role("dialog")
    expect(viewer.locator(".viewer-chunk.cited")).to_be_in_viewport()
    expect(viewer.get_by_role("button", name="打开原文件")).to_be_visible()
    assert no_horizontal_overflow(page)
    screenshot(page, "phone-viewer-zh")
    viewer.get_by_role("button", name="关闭").click()

    page.get_by_role("tab", name="知识库管理").click()
    page.get_by_role("button", name=re.compile("^手机")).click()
    expect(page.locator("#docs-heading")).to_have_text("手机 中的文档")
    expect(page.locator("#doc-list .doc-name")).to_have_text(["bridge.md", "zephyr.md"])
    assert no_horizontal_overflow(page)
    screenshot(page, "phone-manage-zh")

    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("tab", name="Manage")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#docs-heading")).to_have_text("Documents in 手机")
    expect(page.locator("html")).to_have_attribute("lang", "en")


MARKDOWN = """# Title
Intro with **bold** and *em* and `x < y` [1] and [2, 3] and [9] and 【2】.
Second line <b onclick="x()">not bold</b>

- item one
  continued
- item two
1. first
> quoted **text**

```
<script>code()</script>
```
a_b and window.__name__ stay as written."""

MARKDOWN_HTML = (
    "<h3>Title</h3>"
    "<p>Intro with <strong>bold</strong> and <em>em</em> and <code>x &lt; y</code>"
    " <b-cite>1</b-cite> and <b-cite>2</b-cite><b-cite>3</b-cite> and [9] and <b-cite>2</b-cite>."
    '<br>Second line &lt;b onclick="x()"&gt;not bold&lt;/b&gt;</p>'
    "<ul><li>item one<br>continued</li><li>item two</li></ul>"
    "<ol><li>first</li></ol>"
    "<blockquote><p>quoted <strong>text</strong></p></blockquote>"
    "<pre><code>&lt;script&gt;code()&lt;/script&gt;</code></pre>"
    "<p>a_b and window.__name__ stay as written.</p>"
)


def test_markdown_renderer_and_event_parser(server: Server, new_page: Any) -> None:
    page = new_page()
    page.goto(server.url)
    rendered = page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            const cite = (n) => n > 3 ? null : Object.assign(
                document.createElement("b-cite"), { textContent: String(n) });
            const box = document.createElement("div");
            box.append(renderMarkdown(text, cite));
            return box.innerHTML;
        }""",
        MARKDOWN,
    )
    assert rendered == MARKDOWN_HTML

    # CRLF framing cut at every character, a comment line, "data:" without its space.
    stream = 'data: {"a":1}\r\n\r\n: keep-alive\r\ndata:{"b":"x\\ny"}\n\ndata: {"c":3}\r\r'
    events = page.evaluate(
        """async (stream) => {
            const { SseParser } = await import("/static/api.js");
            const events = [];
            const parser = new SseParser((data) => events.push(JSON.parse(data)));
            for (const ch of stream) parser.push(ch);
            parser.end();
            return events;
        }""",
        stream,
    )
    assert events == [{"a": 1}, {"b": "x\ny"}, {"c": 3}]
