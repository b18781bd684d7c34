"""Running a generation for a route: whole (JSON) or as Server-Sent Events.

A stream's headers go out only once its first event exists, i.e. after it got a generation
slot and the retrieval ran: a full queue, an unknown KB, an empty or too long question are
still proper HTTP statuses. After that, errors become an `error` event. The response holds
the request's place in the generation queue until it ends, however it ends; a client that
disconnects sets the generation's cancel event.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kbqa.server.errors import api_error_for
from kbqa.server.generation import ShuttingDown, Ticket
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


async def generate(state: ServerState, fn: Callable[[threading.Event], T]) -> T:
    """`fn(cancel)` in a generation slot; its result."""
    async with state.gate.admit() as ticket:
        result = await ticket.call(fn)
    if ticket.interrupted:
        raise ShuttingDown()  # cut short: not a whole answer
    return result


async def event_stream(
    state: ServerState,
    produce: Callable[[threading.Event], Iterator[T]],
    render: Callable[[AsyncIterator[T]], AsyncIterator[str]],
) -> EventStream:
    """Start `produce(cancel)` in a generation slot and stream it, rendered, as SSE."""
    ticket = state.gate.admit()
    try:
        events = ticket.stream(produce)
        first = await anext(events)
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
