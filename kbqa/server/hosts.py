"""Host header allow-list: an open server on loopback answers only to loopback names.

A server without any API key trusts whoever can connect, which on 127.0.0.1 means programs on
this machine. A web page from elsewhere can still reach it through the user's browser by DNS
rebinding: its own name, re-pointed at 127.0.0.1, makes the browser treat the local server as
that page's origin. Such a request names the page's host in `Host`, so while the server is
open, a request that arrived on a loopback address must name 127.0.0.1, localhost or [::1]
(any port), or a name in `server.allowed_hosts`; anything else is refused with
`400 host_not_allowed` before any route runs. `*` in the list turns the check off.

Requests arriving on another address (a server bound to the LAN) are not checked: the user
chose to offer it there, and a key is what protects such a server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from kbqa.server.errors import error_response

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(host: str) -> str:
    """The name part of a Host header, lower case: `[::1]:8000` → `::1`, `LocalHost.` →
    `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def arrived_on_loopback(scope: Scope) -> bool:
    """Whether the connection's local address (not the bind address) is a loopback one."""
    server = scope.get("server")
    if not server:
        return False
    try:
        return ipaddress.ip_address(str(server[0])).is_loopback
    except ValueError:
        return False


class LoopbackHostGuard:
    """Pure ASGI middleware refusing other Host names on loopback while the server is open."""

    def __init__(
        self, app: ASGIApp, *, allowed_hosts: Iterable[str], is_open: Callable[[], bool]
    ) -> None:
        self.app = app
        extra = {host_name(h) for h in allowed_hosts}
        self.check = "*" not in extra
        self.allowed = LOOPBACK_NAMES | extra
        self.is_open = is_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.check and arrived_on_loopback(scope):
            host = Headers(scope=scope).get("host")
            # No Host at all (HTTP/1.0) is no browser's request: rebinding needs one.
            if host is not None and host_name(host) not in self.allowed and self.is_open():
                message = (
                    f"Host {host!r} is not allowed: an open server (no API key) answers on "
                    "loopback only to 127.0.0.1, localhost and [::1]; add the name to "
                    "server.allowed_hosts"
                )
                await error_response(400, "host_not_allowed", message)(scope, receive, send)
                return
        await self.app(scope, receive, send)
