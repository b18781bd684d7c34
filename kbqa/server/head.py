"""`HEAD` wherever `GET` is: the GET route runs and only its status and headers are sent.

FastAPI's routes answer only the methods they declare, so `HEAD /` was 405. Rather than
declaring HEAD on every route (which would double every operation in the OpenAPI schema),
this middleware hands a HEAD request to the app as a GET and drops the body it answers. A
streaming response (an event stream never ends) is stopped once its headers are out, the way
it stops for a client that left.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _HeadersSent(OSError):
    """Raised into a streaming response after the headers: what a closed connection raises."""


class HeadAsGet:
    """Pure ASGI middleware: HEAD runs as GET, and the response body is not sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        headers_sent = False

        async def without_body(message: Message) -> None:
            nonlocal headers_sent
            if message["type"] == "http.response.start":
                headers_sent = True
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif message["type"] == "http.response.body" and message.get("more_body"):
                raise _HeadersSent("HEAD: the body is not sent")

        async def disconnect_after_headers() -> Message:
            if headers_sent:
                return {"type": "http.disconnect"}
            return await receive()

        try:
            await self.app(dict(scope, method="GET"), disconnect_after_headers, without_body)
        except (_HeadersSent, ClientDisconnect):
            if not headers_sent:
                raise
