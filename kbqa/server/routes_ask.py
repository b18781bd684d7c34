"""`POST /v1/ask`: the JSON of `kbqa ask`, or its events as Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from kbqa.answer import Event
from kbqa.server.answering import Question, answer_events, answer_json
from kbqa.server.auth import AccessDep, demand_kbs, require_api_key
from kbqa.server.errors import ERROR_RESPONSES
from kbqa.server.schemas import AskRequest, AskResponse
from kbqa.server.state import StateDep
from kbqa.server.streaming import SSE_RESPONSE, error_message, event_stream, generate, sse

router = APIRouter(
    tags=["answers"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)


@router.post("/v1/ask", response_model=AskResponse, responses=SSE_RESPONSE)
async def ask(
    body: AskRequest, state: StateDep, request: Request, access: AccessDep
) -> Response | AskResponse:
    demand_kbs(access, body.kbs, state.settings)
    question = Question(body.question, body.kbs, body.history, body.top_k)
    if body.stream:
        return await event_stream(state, request, partial(answer_events, state, question), ask_sse)
    answer = await generate(state, request, partial(answer_json, state, question))
    return AskResponse.model_validate(answer)


async def ask_sse(events: AsyncIterator[Event]) -> AsyncIterator[str]:
    """`{"type":"sources"}`, `{"type":"token"}`…, `{"type":"done"}`, or `{"type":"error"}`."""
    try:
        async for event in events:
            yield sse(event.to_json())
    except Exception as e:
        yield sse({"type": "error", "message": error_message(e)})
