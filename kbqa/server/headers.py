"""Security headers on every response, and CORS where the settings allow it.

The web page is built to run under a strict Content-Security-Policy: scripts and styles come
only from `/static` (no inline script, style attribute or `eval`), requests go only to this
origin, and the page may not be framed. The source viewer shows originals from `blob:` URLs
(images, PDFs in a new tab, which inherits this policy), hence `blob:` for images, media and
frames. The API's `/docs` and `/redoc` (kbqa.server.api_docs) load their assets from this
server but start them with an inline script: only they get a relaxed policy, which still
allows nothing from elsewhere.

A response that sets its own policy keeps it (the viewer's route sandboxes active content).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "frame-src 'self' blob:",
        "object-src 'none'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
DOCS_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "worker-src 'self' blob:",  # ReDoc's search runs in a worker made from a blob
        "connect-src 'self'",
        "frame-ancestors 'none'",
    )
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP level 2
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SecurityHeaders:
    """Pure ASGI middleware adding SECURITY_HEADERS and the CSP to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_POLICY if scope["path"] in DOCS_PATHS else PAGE_POLICY

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", policy)
            await send(message)

        await self.app(scope, receive, with_headers)


def install_cors(app: Starlette, origins: list[str]) -> None:
    """With `server.cors_origins` set, answer those origins only; without, send no CORS headers
    at all, so browsers keep other sites' pages from reading any response."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Accept", "Mcp-Session-Id"],
        expose_headers=["Retry-After", "Mcp-Session-Id"],
        max_age=600,
    )
