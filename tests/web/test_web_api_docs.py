"""`/docs` and `/redoc` render in a real Chromium with every request off this machine refused.

Each request the page makes that is not to the loopback server is aborted and recorded, and
every Content-Security-Policy violation (a request the policy stopped before it left) is
recorded too: the test needs the documentation drawn, no request off the machine, and no
violation but the one ReDoc's bundle cannot help (see below).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from web_helpers import Server, expect, screenshot

pytestmark = pytest.mark.browser

WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.effectiveDirective} ${e.blockedURI}`);
});
"""


def offline_page(new_page: Any, outside: list[str]) -> Any:
    """A page whose requests to anywhere but 127.0.0.1 fail, as on a machine without internet."""
    page = new_page()
    page.context.add_init_script(WATCH_VIOLATIONS)

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_loopback)
    return page


def test_swagger_ui_renders_offline(server: Server, new_page: Any) -> None:
    outside: list[str] = []
    page = offline_page(new_page, outside)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("kbqa")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    expect(page.locator(".swagger-ui")).to_contain_text("/v1/ask")
    icon = page.locator('link[rel~="icon"]').first.get_attribute("href")
    assert icon is not None and icon.startswith("/static/api-docs/")
    screenshot(page, "api-docs-swagger")
    assert outside == []
    assert page.evaluate("window.__violations") == []


def test_redoc_renders_offline(server: Server, new_page: Any) -> None:
    outside: list[str] = []
    page = offline_page(new_page, outside)
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("kbqa")
    expect(page.get_by_text("/v1/ask").first).to_be_attached()
    screenshot(page, "api-docs-redoc")
    assert outside == []
    # ReDoc's bundle always draws its maker's logo from their CDN in the sidebar; the docs'
    # policy stops that request in the browser (and the bundle hides the broken image). The
    # browser reports the violation when the image is drawn: wait for it, then it is the only one.
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__violations") == [
        "img-src https://cdn.redoc.ly/redoc/logo-mini.svg"
    ]
