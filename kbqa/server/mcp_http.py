"""`/mcp`: kbqa.mcp_server over streamable HTTP, inside the API server.

The tools answer through the same generation gate as the HTTP routes (a full queue is a tool
error, not a second, unbounded queue), use the server's loaded retriever and chain, and see
the KBs of the request's key (AccessGuard has authenticated it before the MCP SDK reads the
body). The SDK's DNS-rebinding check stays on for a loopback server, extended by the CORS
allow-list.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request

from kbqa.chain import QAChain
from kbqa.keys import Access
from kbqa.mcp_server import McpBackend, build_mcp
from kbqa.retrieval import Retriever
from kbqa.server.auth import request_access
from kbqa.server.errors import ApiError
from kbqa.server.state import ServerState

MCP_PATH = "/mcp"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def mcp_app(state: ServerState) -> tuple[MCPServer, Starlette]:
    """The MCP server over `state`, and the Starlette app whose `/mcp` route serves it (its
    session manager must run while the server does: `server.session_manager.run()`)."""
    server = build_mcp(
        McpBackend(
            settings=state.settings,
            retriever=lambda: _loaded(state.retriever),
            chain=lambda: _loaded(state.chain),
            answering=lambda fn: _answer(state, fn),
            access=_access,
        )
    )
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, transport_security=_transport_security(state)
    )
    return server, app


def _loaded(component: Retriever | QAChain | None) -> Any:
    if component is None:
        raise ApiError(503, "starting", "the server is starting")
    return component


async def _answer(state: ServerState, fn: Any) -> dict[str, Any]:
    async with state.gate.admit() as ticket:
        result: dict[str, Any] = await ticket.call(fn)
    return result


def _access(ctx: Context) -> Access:
    request = ctx.request_context.request
    if not isinstance(request, Request):  # not over HTTP: nothing vouches for the caller
        raise ApiError(401, "unauthorized", "no request to authenticate")
    return request_access(request)


def _transport_security(state: ServerState) -> TransportSecuritySettings:
    server = state.settings.server
    if server.host not in _LOOPBACK:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=[
            "http://127.0.0.1:*",
            "http://localhost:*",
            "http://[::1]:*",
            *server.cors_origins,
        ],
    )
