"""Running a generation for a route: whole (JSON) or as Server-Sent Events.

A stream's headers go out only once its first event exists, i.e. after it got a generation
slot and the retrieval ran: a full queue, an unknown KB, an empty or too long question are
still proper HTTP statuses. After that, errors become an `error` event. The response holds
the request's place in the generation queue until it ends, however it ends; a client that
disconnects sets the generation's cancel event.

Until a response starts, the request watches its connection: a client that disconnects while
its request waits in line leaves the line, and one that disconnects while its whole
(non-streamed) answer is generated stops that generation at the next token, rather than
leaving the model to finish an answer nobody will read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kbqa.server.errors import ApiError, ShuttingDown, api_error_for
from kbqa.server.generation import Ticket
from kbqa.server.state import ServerState

T = TypeVar("T")
log = logging.getLogger("kbqa.server")

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or Server-Sent Events (`data:` lines of JSON) when `stream` is true",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class EventStream(StreamingResponse):
    """Server-Sent Events for one admitted generation; releases its ticket when done."""

    media_type = "text/event-stream"

    def __init__(self, ticket: Ticket, lines: AsyncIterator[str]) -> None:
        super().__init__(lines, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ticket.release()


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def error_message(exc: Exception) -> str:
    known = api_error_for(exc)
    if known is not None:
        return known.message
    log.error("generation failed", exc_info=exc)
    return "internal server error"


class ClientGone(ApiError):
    """The client disconnected before its answer was ready (its response goes nowhere)."""

    def __init__(self) -> None:
        # 499: nginx's "client closed request", for the access log's sake.
        super().__init__(499, "client_closed_request", "the client closed the connection")


async def generate(state: ServerState, request: Request, fn: Callable[[threading.Event], T]) -> T:
    """`fn(cancel)` in a generation slot; its result, or ClientGone if the client left first."""
    async with state.gate.admit() as ticket:
        result = await unless_disconnected(request.receive, ticket.call(fn))
    if ticket.interrupted:
        raise ShuttingDown()  # cut short: not a whole answer
    return result


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled and ClientGone raised.

    Call it once the request body has been read: the next ASGI message is then
    `http.disconnect`, which the server sends when the connection closes (or, harmlessly,
    once the response is complete).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            # Cancelling a ticket's wait sets its cancel event: the worker stops at its next
            # token and the slot comes free when it has (see generation.Ticket).
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def event_stream(
    state: ServerState,
    request: Request,
    produce: Callable[[threading.Event], Iterator[T]],
    render: Callable[[AsyncIterator[T]], AsyncIterator[str]],
) -> EventStream:
    """Start `produce(cancel)` in a generation slot and stream it, rendered, as SSE."""
    ticket = state.gate.admit()
    try:
        events = ticket.stream(produce)
        # Once streaming, the response itself sees a disconnect (Starlette's StreamingResponse).
        first = await unless_disconnected(request.receive, anext(events))
    except BaseException:
        ticket.release()
        raise
    return EventStream(ticket, render(_whole(ticket, first, events)))


async def _whole(ticket: Ticket, first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """`first`, then `rest`, ending in ShuttingDown instead of what a shutdown cut short."""
    yield first
    async for item in rest:
        if ticket.interrupted:
            raise ShuttingDown()
        yield item
