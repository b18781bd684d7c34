"""Request body size limits, enforced while the body arrives (not after it was spooled whole).

Uploads may be as large as `server.max_upload_mb`; every other body is JSON and gets a fixed,
generous cap. A declared `Content-Length` over the limit is refused before anything is read;
a chunked body is cut off as soon as it passes the limit. Either way the answer is a 413 in
the one error shape.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kbqa.server.errors import error_response

JSON_BODY_LIMIT = 4 * 1024 * 1024
"""Questions, histories and chat transcripts: far below this; anything above is abuse."""

MULTIPART_SLACK = 64 * 1024
"""Multipart framing (boundaries, part headers) on top of the files themselves."""


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes its limit.

    An HTTPException, so FastAPI's body parsing lets it through to the error handlers.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit / 1024 / 1024:g} MB limit")


class BodyLimit:
    """Pure ASGI middleware (no BaseHTTPMiddleware: that would break streaming disconnects)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            too_large = BodyTooLarge(limit)
            response = error_response(413, "payload_too_large", str(too_large.detail))
            await response(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            response = error_response(413, "payload_too_large", str(e.detail))
            await response(scope, receive, send)


def upload_aware_limit(max_upload_mb: float) -> Callable[[Scope], int]:
    """Upload routes (`POST /v1/kbs/{kb}/documents`) get the upload limit, the rest the JSON cap."""
    upload_limit = int(max_upload_mb * 1024 * 1024) + MULTIPART_SLACK

    def limit_for(scope: Scope) -> int:
        path: str = scope.get("path", "")
        if (
            scope.get("method") == "POST"
            and path.startswith("/v1/kbs/")
            and path.endswith("/documents")
        ):
            return upload_limit
        return JSON_BODY_LIMIT

    return limit_for
