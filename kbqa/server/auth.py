"""API key check: with `KBQA_API_KEY` (or `server.api_key`) set, every route but `/healthz`,
`GET /`, `/static/*` and the API's own documentation (`/docs`, `/redoc`, `/openapi.json`)
needs `Authorization: Bearer <key>`; a missing or wrong key gets 401.

The check runs as ASGI middleware, before any body is read: an unauthenticated client cannot
make the server spool an upload or parse its JSON. The routers also declare the dependency,
which puts the bearer scheme into the OpenAPI schema and checks a second time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from kbqa.server.errors import ApiError, error_response
from kbqa.server.state import SettingsDep

_bearer = HTTPBearer(
    auto_error=False,
    description="Needed when the server has an API key (KBQA_API_KEY); open otherwise.",
)

_OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_UNAUTHORIZED = "missing or wrong API key (send Authorization: Bearer <key>)"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def is_open(method: str, path: str) -> bool:
    """Routes anyone may call: health, the web page and its assets, the API's documentation."""
    if path in _OPEN_PATHS or path.startswith("/static/"):
        return True
    return path == "/" and method in ("GET", "HEAD")


def key_matches(authorization: str | None, expected: str) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    # Constant time in the key's content: a timing probe learns nothing about a prefix.
    return hmac.compare_digest(given.strip().encode(), expected.encode())


class ApiKeyGuard:
    """Pure ASGI middleware answering 401 for a protected route without the right key."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.api_key
            and not is_open(scope["method"], scope["path"])
            and not key_matches(Headers(scope=scope).get("authorization"), self.api_key)
        ):
            response = error_response(401, "unauthorized", _UNAUTHORIZED, _CHALLENGE)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def require_api_key(  # async: see kbqa.server.state (no thread pool round trip)
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = settings.server.api_key
    if not expected:
        return
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    if not key_matches(header, expected):
        raise ApiError(401, "unauthorized", _UNAUTHORIZED, headers=_CHALLENGE)
