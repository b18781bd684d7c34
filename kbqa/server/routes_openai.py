"""OpenAI-compatible routes: `GET /v1/models`, `POST /v1/chat/completions` (streaming and not).

Models: `kbqa` answers from the `default` KB, `kbqa/<kb>` from that KB (both add a top-level
`sources` field), and the backend's own model name chats plainly, without a KB.

KB answers carry evidence in their sources (kbqa.evidence): a whole completion's `sources`
have it; a stream sends the sources without it first and with it on its last chunk. Where
the streamed answer was replaced by sentences quoted from the sources (kbqa.answer_mode), the
stream adds a note and the quote as a last piece of content: clients show only the content.

`usage` is the backend's own count (see kbqa.server.usage): on every whole completion, and in
a stream that asks for it with `stream_options.include_usage`, as OpenAI does: a last chunk
with empty `choices` and the `usage`, before `data: [DONE]` (every other chunk then has
`"usage": null`). It is `null` where the backend does not report its usage.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from kbqa.answer import DoneEvent, Event, SourcesEvent, TokenEvent
from kbqa.answer_mode import REPLACED_NOTE
from kbqa.keys import Access
from kbqa.server.answering import Options, Question, answer_events, chat_tokens, split_conversation
from kbqa.server.auth import AccessDep, require_api_key
from kbqa.server.errors import ERROR_RESPONSES, ApiError
from kbqa.server.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    SourceBody,
    Usage,
)
from kbqa.server.state import ServerState, StateDep
from kbqa.server.streaming import SSE_RESPONSE, error_message, event_stream, generate, sse
from kbqa.server.usage import Metered, metered
from kbqa.storage.kb import KnowledgeBase

KB_MODEL = "kbqa"

router = APIRouter(
    tags=["OpenAI-compatible"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES
)


@router.get("/v1/models")
def list_models(state: StateDep, access: AccessDep) -> ModelList:
    names = model_names(state, access)
    return ModelList(data=[ModelCard(id=name, created=0) for name in names])


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=SSE_RESPONSE)
async def chat_completions(
    body: ChatCompletionRequest, state: StateDep, request: Request, access: AccessDep
) -> Response | ChatCompletion:
    plan = await anyio.to_thread.run_sync(plan_completion, state, body, access)
    produce = partial(metered, plan)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    reply = Reply(body.model, with_sources=body.model != state.model_name, with_usage=include_usage)
    if body.stream:
        return await event_stream(state, request, produce, reply.chunks)
    return reply.completion(await generate(state, request, partial(_collect, produce)))


def model_names(state: ServerState, access: Access) -> list[str]:
    """The models the key may use: `kbqa` needs the `default` KB, `kbqa/<kb>` that KB."""
    kbs = access.visible(KnowledgeBase.list_names(state.settings.kbs_dir))
    default = [KB_MODEL] if access.sees("default") else []
    return [*default, *(f"{KB_MODEL}/{kb}" for kb in kbs), state.model_name]


Producer = Callable[[threading.Event], Iterator[Event]]
Item = Event | Metered


def plan_completion(state: ServerState, body: ChatCompletionRequest, access: Access) -> Producer:
    """What answering `body` means: a KB answer or plain chat, as a `produce(cancel)`."""
    options = Options(body.token_limit, body.temperature, body.top_p, tuple(body.stop_list))
    if body.model == state.model_name and body.model != KB_MODEL:
        return partial(chat_tokens, state, body.messages, options)
    kbs = _kbs_of_model(state, body.model, access)
    text, history = split_conversation(body.messages)
    return partial(answer_events, state, Question(text, kbs, history, None, options))


def _kbs_of_model(state: ServerState, model: str, access: Access) -> list[str]:
    if model == KB_MODEL:
        kb = "default"
    elif model.startswith(f"{KB_MODEL}/"):
        kb = model.removeprefix(f"{KB_MODEL}/")
    else:
        raise ApiError(404, "model_not_found", f"no model {model!r} (see GET /v1/models)")
    if kb not in KnowledgeBase.list_names(state.settings.kbs_dir) or not access.sees(kb):
        raise ApiError(404, "model_not_found", f"no model {model!r}: no knowledge base {kb!r}")
    return [kb]


def _collect(
    produce: Callable[[threading.Event], Iterator[Item]], cancel: threading.Event
) -> list[Item]:
    return list(produce(cancel))


class Reply:
    """One completion's id, time and model, rendered whole or as chunks."""

    def __init__(self, model: str, *, with_sources: bool, with_usage: bool = False) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.with_sources = with_sources
        self.with_usage = with_usage
        """Streams only: end with a usage chunk (whole completions always carry usage)."""

    def completion(self, items: list[Item]) -> ChatCompletion:
        done = next(e for e in items if isinstance(e, DoneEvent))
        usage = next((m.usage for m in items if isinstance(m, Metered)), None)
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[Choice(message=AssistantMessage(content=done.answer))],
            usage=usage,
            sources=self._sources(items),
        )

    async def chunks(self, items: AsyncIterator[Item]) -> AsyncIterator[str]:
        try:
            async for item in items:
                if isinstance(item, SourcesEvent):
                    delta = Delta(role="assistant", content="")
                    yield self._chunk(delta, sources=self._sources([item]))
                elif isinstance(item, TokenEvent):
                    yield self._chunk(Delta(content=item.text))
                elif isinstance(item, DoneEvent):
                    if item.generated is not None:
                        yield self._chunk(Delta(content=f"\n\n{REPLACED_NOTE}\n{item.answer}"))
                    yield self._chunk(Delta(), finish_reason="stop", sources=self._sources([item]))
                elif self.with_usage:
                    yield self._usage_chunk(item.usage)
        except Exception as e:
            yield sse({"error": {"code": "generation_failed", "message": error_message(e)}})
        yield "data: [DONE]\n\n"

    def _chunk(self, delta: Delta, **fields: Any) -> str:
        finish = fields.pop("finish_reason", None)
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
            **fields,
        )
        data = chunk.model_dump(mode="json")
        # Like OpenAI: a delta carries only what it has; absent extras are left out, but with
        # include_usage every chunk has a `usage` key (null until the last chunk).
        data["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        if data["usage"] is None and not self.with_usage:
            del data["usage"]
        if data["sources"] is None:
            del data["sources"]
        return sse(data)

    def _usage_chunk(self, usage: Usage | None) -> str:
        """OpenAI's last chunk with include_usage: no choices, the whole request's usage."""
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=usage
        )
        return sse(chunk.model_dump(mode="json", exclude={"sources"}))

    def _sources(self, events: Sequence[Item]) -> list[SourceBody] | None:
        """The sources of the last event that has them (the done event's carry evidence)."""
        if not self.with_sources:
            return None
        found: list[Any] = []
        for event in events:
            if isinstance(event, SourcesEvent | DoneEvent) and event.sources is not None:
                found = event.sources
        return [SourceBody.model_validate(s.to_json()) for s in found]
