"""Tables and links in answers: the renderer on its own (markdown.js in the page) and a streamed
answer from the real server (see conftest.py and web_helpers.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from web_helpers import (
    PHONE,
    TABLE_WORD,
    Server,
    ask,
    expect,
    no_horizontal_overflow,
    pick_only,
    screenshot,
    seed_kb,
)

pytestmark = pytest.mark.browser

# Written for these tests.
WIDGETS = "# Widgets\n\nThe Zephyr-9 widget weighs 412 grams. The Quasar lamp weighs 97 grams.\n"

LINK = 'target="_blank" rel="noopener noreferrer"'

# (Markdown, the HTML the renderer must build). Citations 1–3 exist; the others do not.
CASES = [
    # A table that interrupts a paragraph; alignments; a citation and formatting in cells; an
    # escaped pipe; a short row padded, a long row cut; a line without a pipe ends the table.
    (
        "Weights [1]:\n"
        "| Name | Grams | Colour | Note |\n"
        "|:-----|------:|:------:|------|\n"
        "| **Zephyr** | 412 [2] | teal | `a\\|b` or c \\| d |\n"
        "| Quasar |\n"
        "| Long | 1 | 2 | 3 | dropped |\n"
        "Done.",
        "<p>Weights <b-cite>1</b-cite>:</p>"
        '<div class="table-scroll" tabindex="0"><table><thead><tr>'
        '<th scope="col" class="align-left">Name</th>'
        '<th scope="col" class="align-right">Grams</th>'
        '<th scope="col" class="align-center">Colour</th>'
        '<th scope="col">Note</th>'
        "</tr></thead><tbody><tr>"
        '<td class="align-left"><strong>Zephyr</strong></td>'
        '<td class="align-right">412 <b-cite>2</b-cite></td>'
        '<td class="align-center">teal</td>'
        "<td><code>a|b</code> or c | d</td>"
        '</tr><tr><td class="align-left">Quasar</td><td class="align-right"></td>'
        '<td class="align-center"></td><td></td>'
        '</tr><tr><td class="align-left">Long</td><td class="align-right">1</td>'
        '<td class="align-center">2</td><td>3</td>'
        "</tr></tbody></table></div>"
        "<p>Done.</p>",
    ),
    # Without outer pipes; a header alone; a delimiter row of another width is no table.
    (
        "a | b\n--|--\n1 | 2\n\n| only |\n|---|\n\n| x | y |\n|---|",
        '<div class="table-scroll" tabindex="0"><table><thead><tr>'
        '<th scope="col">a</th><th scope="col">b</th></tr></thead>'
        "<tbody><tr><td>1</td><td>2</td></tr></tbody></table></div>"
        '<div class="table-scroll" tabindex="0"><table><thead><tr>'
        '<th scope="col">only</th></tr></thead></table></div>'
        "<p>| x | y |<br>|---|</p>",
    ),
    # Raw HTML in a cell stays text.
    (
        '| h |\n|---|\n| <img src=x onerror="window.__xss=1"> |',
        '<div class="table-scroll" tabindex="0"><table><thead><tr><th scope="col">h</th></tr>'
        '</thead><tbody><tr><td>&lt;img src=x onerror="window.__xss=1"&gt;</td></tr></tbody>'
        "</table></div>",
    ),
    # Links: http(s) with parentheses and a title, <…>, mailto, and bare URLs without the
    # punctuation after them.
    (
        '[spec](https://example.com/a_(b)?q=1&r=2 "Title") [u](<https://example.com/c d>) '
        "[mail **us**](mailto:team@example.com) [http](HTTP://Example.com)\n"
        "see https://example.org/x. (https://example.org/y) https://example.org/z?, "
        "参见https://example.org/青石桥。",
        f'<p><a href="https://example.com/a_(b)?q=1&amp;r=2" {LINK}>spec</a> '
        f'<a href="https://example.com/c%20d" {LINK}>u</a> '
        f'<a href="mailto:team@example.com" {LINK}>mail <strong>us</strong></a> '
        f'<a href="http://example.com/" {LINK}>http</a>'
        f'<br>see <a href="https://example.org/x" {LINK}>https://example.org/x</a>. '
        f'(<a href="https://example.org/y" {LINK}>https://example.org/y</a>) '
        f'<a href="https://example.org/z" {LINK}>https://example.org/z</a>?, '
        f'参见<a href="https://example.org/%E9%9D%92%E7%9F%B3%E6%A1%A5" {LINK}>'
        "https://example.org/青石桥</a>。</p>",
    ),
    # Every other scheme, relative and malformed URLs stay as written.
    (
        "[a](javascript:window.__xss=1) [b](JavaScript:alert(1)) [c](java\tscript:alert(1)) "
        "[d](data:text/html,<script>x</script>) [e](vbscript:msgbox) [f](/v1/kbs) "
        "[g](//evil.example) [h](https:evil.example) [i](http://) [j](file:///etc/passwd) "
        "javascript:alert(1) ftp://example.org",
        "<p>[a](javascript:window.__xss=1) [b](JavaScript:alert(1)) [c](java\tscript:alert(1)) "
        "[d](data:text/html,&lt;script&gt;x&lt;/script&gt;) [e](vbscript:msgbox) [f](/v1/kbs) "
        "[g](//evil.example) [h](https:evil.example) [i](http://) [j](file:///etc/passwd) "
        "javascript:alert(1) ftp://example.org</p>",
    ),
    # Citations stay citations; a link's text is text (markup in it too), never a citation.
    (
        "[1](https://example.com) [2024](https://example.com) [1] [9]\n"
        '[<img src=x onerror="window.__xss=1">](https://example.com) '
        "[see 2 https://example.org](https://example.com) `[x](https://example.com)`",
        f'<p><b-cite>1</b-cite>(<a href="https://example.com/" {LINK}>https://example.com</a>) '
        f'<a href="https://example.com/" {LINK}>2024</a> <b-cite>1</b-cite> [9]'
        f'<br><a href="https://example.com/" {LINK}>&lt;img src=x onerror="window.__xss=1"&gt;</a> '
        f'<a href="https://example.com/" {LINK}>see 2 https://example.org</a> '
        "<code>[x](https://example.com)</code></p>",
    ),
]

RENDER = """async (texts) => {
    const { renderMarkdown } = await import("/static/markdown.js");
    const cite = (n) => n > 3 ? null : Object.assign(
        document.createElement("b-cite"), { textContent: String(n) });
    return texts.map((text) => {
        const box = document.createElement("div");
        box.append(renderMarkdown(text, cite));
        const elements = [...box.querySelectorAll("*")];
        return {
            html: box.innerHTML,
            tags: [...new Set(elements.map((el) => el.localName))],
            attributes: [...new Set(elements.flatMap((el) => el.getAttributeNames()))],
            hrefs: [...box.querySelectorAll("[href]")].map((el) => el.getAttribute("href")),
        };
    });
}"""
ALLOWED_TAGS = {"p", "br", "strong", "em", "code", "a", "b-cite", "div", "table", "thead", "tbody"}
ALLOWED_TAGS |= {"tr", "th", "td"}
ALLOWED_ATTRIBUTES = {"class", "scope", "tabindex", "href", "target", "rel"}


def test_markdown_tables_and_links(server: Server, new_page: Any) -> None:
    page = new_page()
    page.goto(server.url)
    results = page.evaluate(RENDER, [text for text, _ in CASES])
    assert [r["html"] for r in results] == [html for _, html in CASES]
    for result in results:  # whatever the input, only these elements and attributes
        assert set(result["tags"]) <= ALLOWED_TAGS, result
        assert set(result["attributes"]) <= ALLOWED_ATTRIBUTES, result
        assert all(re.match(r"(https?://|mailto:)", href) for href in result["hrefs"]), result
    assert page.evaluate("window.__xss") is None


def test_streamed_table_links_and_hostile_markup(server: Server, new_page: Any) -> None:
    seed_kb(server, "web-table", {"widgets.md": WIDGETS})
    page = new_page()
    page.context.route(
        "https://example.com/**",
        lambda route: route.fulfill(body="<p>stub</p>", content_type="text/html"),
    )
    page.goto(server.url)
    pick_only(page, "web-table")
    with page.expect_response("**/v1/ask") as answered:
        turn = ask(page, f"Please {TABLE_WORD} the widgets")
    assert answered.value.headers["content-type"].startswith("text/event-stream")
    body = turn.locator(".answer-body")

    table = body.locator(".table-scroll > table")
    expect(table).to_have_count(1)
    expect(table.locator("thead th")).to_have_text(
        ["Widget", "Weight (g)", "Colour", "Notes", "Supplier reference code"]
    )
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(0).locator("td")).to_have_text(
        ["Zephyr-9", "412 [1]", "teal", "a|b pipes", "ZEPHYR-NINE-SUPPLIER-0000412"]
    )
    expect(rows.nth(0).locator("td").nth(1).locator("strong")).to_have_text("412")
    expect(rows.nth(1).locator("td").nth(3)).to_have_text(
        "<img src=x onerror=\"window.__xss='cell'\">"
    )
    expect(rows.nth(2).locator("td")).to_have_text(["Short", "", "", "", ""])  # padded
    expect(rows.nth(3).locator("td")).to_have_text(["Long", "1", "2", "3", "4"])  # cut
    for cells in (table.locator("thead th"), rows.nth(0).locator("td")):
        aligns = cells.evaluate_all("(cells) => cells.map((c) => getComputedStyle(c).textAlign)")
        assert aligns == ["left", "right", "center", "left", "left"]
    expect(body.locator(".table-scroll + p")).to_have_text("The table ends here.")

    citation = table.get_by_role("button", name=re.compile(r"^Source 1: widgets\.md$"))
    citation.click()  # a citation inside a table cell opens the source viewer too
    viewer = page.get_by_role("dialog", name="widgets.md")
    expect(viewer.locator(".viewer-chunk.cited")).to_contain_text("412 grams")
    screenshot(page, "chat-table")
    viewer.get_by_role("button", name="Close").click()
    expect(viewer).to_be_hidden()

    links = body.locator("a")
    expect(links).to_have_text(
        [
            "the spec",
            "https://example.org/docs",
            "write to us",
            "<b onclick=\"window.__xss='label'\">bold label</b>",
        ]
    )
    hrefs = links.evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
    assert hrefs == [
        "https://example.com/spec?a=1&b=2",
        "https://example.org/docs",
        "mailto:team@example.com",
        "https://example.com/label",
    ]
    for i in range(4):
        expect(links.nth(i)).to_have_attribute("rel", "noopener noreferrer")
        expect(links.nth(i)).to_have_attribute("target", "_blank")
    for inert in (
        "[run me](javascript:window.__xss='link')",
        "[data me](data:text/html,<script>window.__xss='data'</script>)",
        "[relative](/v1/kbs)",
    ):
        expect(body).to_contain_text(inert)
    assert body.locator("img, script, b, iframe").count() == 0

    with page.context.expect_page() as opened:
        links.first.click()
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.url == "https://example.com/spec?a=1&b=2"
    assert tab.evaluate("window.opener") is None  # noopener: the answer's page stays unreachable
    assert page.evaluate("window.__xss") is None


def test_wide_table_scrolls_in_its_box_on_a_phone(server: Server, new_page: Any) -> None:
    seed_kb(server, "web-table-phone", {"widgets.md": WIDGETS})
    page = new_page(viewport=PHONE)
    page.goto(server.url)
    pick_only(page, "web-table-phone")
    turn = ask(page, f"{TABLE_WORD} the widget weights")
    scroller = turn.locator(".answer-body .table-scroll")
    expect(scroller).to_have_count(1)
    assert scroller.evaluate("(box) => box.scrollWidth > box.clientWidth")
    assert no_horizontal_overflow(page)
    last_cell = scroller.locator("tbody tr").first.locator("td").last
    scroller.evaluate("(box) => box.scrollIntoView({ block: 'start' })")
    expect(last_cell).not_to_be_in_viewport()  # off to the right…
    scroller.evaluate("(box) => { box.scrollLeft = box.scrollWidth; }")
    expect(last_cell).to_be_in_viewport()  # …until the box is scrolled
    screenshot(page, "phone-table")

    header = scroller.locator("thead th").first
    light = header.evaluate("(th) => getComputedStyle(th).backgroundColor")
    page.emulate_media(color_scheme="dark")
    expect(header).not_to_have_css("background-color", light)
    assert no_horizontal_overflow(page)
    screenshot(page, "phone-table-dark")
