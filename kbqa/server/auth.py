"""Who may call what: API keys, their scopes, and the knowledge bases they see.

A server with neither `server.api_key` (`KBQA_API_KEY`) nor a key file from `kbqa keys create`
is open, as before keys existed (revoking every key leaves it closed). Otherwise every route
but `/healthz`, `GET /`, `/static/*` and the API's own documentation (`/docs`, `/redoc`,
`/openapi.json`) needs `Authorization: Bearer <key>`: a missing or wrong key gets 401, and an
address that sent too many wrong keys within a minute gets 429 (kbqa.server.ratelimit).
`server.api_key` is an admin key for every KB; the scoped keys are kbqa.keys.

Each route declares the scope it needs as a router or route dependency (`require_read`,
`require_write`, `require_admin`); a `{kb}` path parameter outside the key's KBs is 404
`kb_not_found`, as for a KB that does not exist, before the scope is looked at (a key learns
nothing about KBs it cannot see); a missing scope is 403 `forbidden`.

`AccessGuard`, a pure ASGI middleware, does all of that before any body is read: it finds the
route the request will reach and reads the scope it declares, so a read key cannot make the
server spool an upload. The dependencies check again inside the route (and put the bearer
scheme into the OpenAPI schema); handlers that filter by KB (listings, `/v1/ask`, jobs) take
the request's `Access` as `AccessDep`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from kbqa.keys import FULL_ACCESS, SCOPES, Access, KeyStore, KeyUsageError
from kbqa.keys import Scope as KeyScope
from kbqa.server.errors import ApiError, error_response
from kbqa.server.ratelimit import FailureLimiter
from kbqa.settings import Settings
from kbqa.storage.kb import KnowledgeBase

log = logging.getLogger("kbqa.server")

ACCESS = "kbqa.access"
"""The ASGI scope entry holding the request's Access, set by AccessGuard."""

_bearer = HTTPBearer(
    auto_error=False,
    description="Needed when the server has API keys (KBQA_API_KEY, kbqa keys); open otherwise.",
)

_PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_UNAUTHORIZED = "missing or wrong API key (send Authorization: Bearer <key>)"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def is_public(method: str, path: str) -> bool:
    """Routes anyone may call: health, the web page and its assets, the API's documentation.
    (A server with no key at all is *open*, Authenticator.is_open: every route is public.)"""
    if path in _PUBLIC_PATHS or path.startswith("/static/"):
        return True
    return path == "/" and method in ("GET", "HEAD")


def bearer_token(authorization: str | None) -> str:
    scheme, _, given = (authorization or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def kb_not_found(kb: str) -> ApiError:
    """What a key is told about a KB it may not see: the same as for one that does not exist."""
    return ApiError(404, "kb_not_found", f"knowledge base {kb} does not exist")


def forbidden(access: Access, needed: KeyScope) -> ApiError:
    return ApiError(
        403,
        "forbidden",
        f"this needs the {needed} scope; the key {access.name!r} has {access.scope}",
    )


def demand(access: Access, needed: KeyScope) -> None:
    """403 unless `access` has the scope `needed` (for checks that depend on the body)."""
    if not access.allows(needed):
        raise forbidden(access, needed)


def demand_kbs(access: Access, kbs: Iterable[str], settings: Settings) -> None:
    """404 `kb_not_found` for the first of `kbs` the key may not see. For a key limited to some
    KBs, one of its own that does not exist is refused here too, so that the answering path's
    message (which names the existing KBs) never reaches it."""
    known = KnowledgeBase.list_names(settings.kbs_dir) if access.kbs is not None else None
    for kb in kbs:
        if not access.sees(kb) or (known is not None and kb not in known):
            raise kb_not_found(kb)


class Authenticator:
    """The request's Access from its Authorization header and client address."""

    def __init__(self, settings: Settings) -> None:
        self.api_key = settings.server.api_key
        self.keys = KeyStore(settings.home)
        self.limiter = FailureLimiter(settings.server.auth_failures_per_minute)

    def is_open(self) -> bool:
        """No key configured, none ever created: open. Revoking the last key does not
        reopen a server (delete keys.json for that)."""
        return not self.api_key and not self.keys.path.exists()

    def access(self, authorization: str | None, client: str) -> Access:
        if self.is_open():
            return FULL_ACCESS
        retry_after = self.limiter.retry_after(client)
        if retry_after is not None:
            raise ApiError(
                429,
                "rate_limited",
                f"too many wrong API keys from this address; try again in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        given = bearer_token(authorization)
        if not given:
            raise ApiError(401, "unauthorized", _UNAUTHORIZED, headers=_CHALLENGE)
        found = self.keys.authenticate(given)
        # Both comparisons always run: which kind of key matched does not show in the timing.
        if hmac.compare_digest(given.encode(), self.api_key.encode()) and self.api_key:
            return FULL_ACCESS
        if found is not None:
            return found
        self.limiter.failed(client)
        raise ApiError(401, "unauthorized", _UNAUTHORIZED, headers=_CHALLENGE)


class AccessGuard:
    """Pure ASGI middleware: authenticate, then apply the reached route's declared scope and
    KB visibility, answering a refusal before the app reads the body."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, router: Router) -> None:
        self.app = app
        self.authenticator = authenticator
        self.router = router
        self._scopes: dict[int, KeyScope] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else ""
        try:
            access = self.authenticator.access(Headers(scope=scope).get("authorization"), client)
            self._check_route(scope, access)
        except ApiError as e:
            response = error_response(e.status, e.code, e.message, e.headers)
            await response(scope, receive, send)
            return
        except KeyUsageError as e:
            log.error("refusing every key: %s", e)
            response = error_response(500, "key_file_damaged", "the server's key file is damaged")
            await response(scope, receive, send)
            return
        scope[ACCESS] = access
        await self.app(scope, receive, send)

    def _check_route(self, scope: Scope, access: Access) -> None:
        for route in flat_routes(self.router.routes):
            match, child = route.matches(scope)
            if match == Match.FULL:
                kb = child.get("path_params", {}).get("kb")
                if isinstance(kb, str) and not access.sees(kb):
                    raise kb_not_found(kb)
                needed = self._scopes.get(id(route))
                if needed is None:
                    needed = self._scopes[id(route)] = declared_scope(route)
                demand(access, needed)
                return


class Needs:
    """A route dependency declaring the scope the route needs (see the module docstring)."""

    def __init__(self, scope: KeyScope) -> None:
        self.scope = scope

    async def __call__(  # async: see kbqa.server.state (no thread pool round trip)
        self,
        request: Request,
        # Unused here (AccessGuard read the header): declared so that OpenAPI shows the scheme.
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Access:
        access = request_access(request)
        kb = request.path_params.get("kb")
        if isinstance(kb, str) and not access.sees(kb):
            raise kb_not_found(kb)
        demand(access, self.scope)
        return access


require_read = Needs("read")
require_write = Needs("write")
require_admin = Needs("admin")
require_api_key = require_read
"""Every router's baseline: a key (if the server has keys) that may read, and sees the KB."""


def request_access(request: Request) -> Access:
    access = request.scope.get(ACCESS)
    if not isinstance(access, Access):  # AccessGuard did not run: refuse rather than guess
        raise ApiError(401, "unauthorized", _UNAUTHORIZED, headers=_CHALLENGE)
    return access


async def current_access(request: Request) -> Access:
    return request_access(request)


AccessDep = Annotated[Access, Depends(current_access)]


def flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of the app, in matching order, with included routers opened up (FastAPI
    keeps an included router as one route that holds the router's own). kbqa includes its
    routers without a prefix, so each route matches the request's path as it is."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if isinstance(included, Router):
            yield from flat_routes(included.routes)
        else:
            yield route


def declared_scope(route: BaseRoute) -> KeyScope:
    """The highest scope among a route's `Needs` dependencies (read for routes without any,
    such as `/mcp`, whose tools check KB visibility themselves)."""
    needed: KeyScope = "read"
    if isinstance(route, APIRoute):
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            call = dependant.call
            if isinstance(call, Needs) and SCOPES.index(call.scope) > SCOPES.index(needed):
                needed = call.scope
            pending.extend(dependant.dependencies)
    return needed
