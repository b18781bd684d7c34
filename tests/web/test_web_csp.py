"""The page under its Content-Security-Policy, and with a scoped key typed by the user.

Every console error and every CSP violation report (`securitypolicyviolation`, in the page and
in the tab an original opens in) fails the test; a deliberate inline script at the end shows
that the policy is enforced and that a violation would be seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from web_helpers import Server, ask, expect, pick_only, screenshot, seed_kb, start_server, warm_up

from kbqa.keys import KeyStore

pytestmark = pytest.mark.browser

QUESTION = "How much does the Zephyr-9 widget weigh?"
ZEPHYR = "# Zephyr-9\n\nThe Zephyr-9 widget weighs 412 grams and is painted teal.\n"
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.effectiveDirective} ${e.blockedURI}`);
});
"""


def watched(page: Any, problems: list[str]) -> Any:
    """`page` with its console errors collected into `problems`."""
    page.on(
        "console",
        lambda message: (
            problems.append(f"{page.url}: {message.text}") if message.type == "error" else None
        ),
    )
    return page


def violations(page: Any) -> list[str]:
    return list(page.evaluate("window.__violations"))


def test_the_page_works_under_its_policy(server: Server, new_page: Any) -> None:
    seed_kb(server, "web-csp", {"zephyr.md": ZEPHYR})
    problems: list[str] = []
    page = watched(new_page(), problems)
    page.context.add_init_script(WATCH_VIOLATIONS)
    response = page.goto(server.url)
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy

    pick_only(page, "web-csp")
    turn = ask(page, QUESTION)
    expect(turn.locator(".answer-body")).to_contain_text("412 grams")
    turn.locator(".answer-body button.cite").first.click()
    dialog = page.locator("#viewer-dialog")
    expect(dialog.locator(".viewer-chunk.cited")).to_contain_text("412 grams")
    with page.expect_popup() as popup_info:
        dialog.get_by_role("button", name="Open original").click()
    popup = watched(popup_info.value, problems)
    popup.wait_for_url("blob:**")
    expect(popup.locator("body")).to_contain_text("412 grams")
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="Manage").click()
    expect(page.get_by_role("button", name="Delete knowledge base web-csp")).to_be_visible()
    screenshot(page, "csp-manage")

    assert violations(page) == [] and violations(popup) == []
    assert problems == []

    # The policy is enforced, and a violation would have been seen.
    page.evaluate(
        """() => {
          const s = document.createElement("script");
          s.textContent = "window.__inline = true";
          document.body.append(s);
        }"""
    )
    expect(page.locator("body")).to_be_attached()
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__inline") is None
    assert violations(page)[0].startswith("script-src")


def test_a_read_key_typed_into_the_page(tmp_path: Path, new_page: Any) -> None:
    """The page sends the key the user typed: a read key limited to one KB sees that KB only,
    answers from it, and is refused a deletion, which the page reports."""
    home = tmp_path / "home"
    running: Server = start_server(home)  # no server.api_key: the key below closes it
    try:
        warm_up(running)
        seed_kb(running, "team", {"zephyr.md": ZEPHYR})
        seed_kb(running, "private", {"zephyr.md": ZEPHYR})
        key = KeyStore(home).create("colleague", "read", ["team"])[1]
        problems: list[str] = []
        page = watched(new_page(), problems)
        page.goto(running.url)
        page.fill("#key-input", key)
        page.press("#key-input", "Enter")
        expect(page.locator('#kb-choices input[value="team"]')).to_be_attached()
        expect(page.locator('#kb-choices input[value="private"]')).to_have_count(0)
        pick_only(page, "team")
        turn = ask(page, QUESTION)
        expect(turn.locator(".answer-body")).to_contain_text("412 grams")

        page.get_by_role("tab", name="Manage").click()
        page.get_by_role("button", name="Delete knowledge base team").click()
        page.get_by_role("dialog").get_by_role("button", name="Delete").click()
        expect(page.locator("#manage-error")).to_contain_text("needs the admin scope")
        expect(page.get_by_role("button", name="Delete knowledge base team")).to_be_visible()
        screenshot(page, "read-key-refused")
        # The browser logs the refused requests themselves (401 before the key was typed,
        # 403 for the deletion); nothing else may go wrong.
        refused = ("status of 401 (Unauthorized)", "status of 403 (Forbidden)")
        assert [p for p in problems if not p.endswith(refused)] == []
        assert any(p.endswith(refused[1]) for p in problems)
    finally:
        running.stop()
