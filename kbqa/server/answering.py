"""Plain functions between the routes and the chain: the request's generation options applied
to the model, the question asked, and what comes back shaped as our API, OpenAI's and
ChatGLM2's. They run in the generation gate's worker thread and honour its cancel event.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from kbqa.answer import DoneEvent, Event, SourcesEvent, Timings, TokenEvent
from kbqa.chain import QAChain
from kbqa.server.errors import ApiError
from kbqa.server.schemas import ChatMessage
from kbqa.server.state import ServerState


@dataclass(frozen=True)
class Options:
    """A request's generation options; None keeps the server's setting."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Question:
    text: str
    kbs: list[str]
    history: list[list[str]] = field(default_factory=list)
    """[[question, answer], …], oldest first."""
    top_k: int | None = None
    options: Options = Options()


def tuned_model(state: ServerState, options: Options) -> BaseChatModel:
    """The server's model with this request's options, capped by the configured answer length
    (the prompt budget leaves room for that many tokens and no more)."""
    model = state.chat_model
    assert model is not None
    fields = type(model).model_fields
    update: dict[str, Any] = {}
    if options.max_new_tokens is not None:
        limit = min(options.max_new_tokens, state.settings.llm.max_new_tokens)
        key = "max_new_tokens" if "max_new_tokens" in fields else "max_tokens"
        if key in fields:
            update[key] = limit
    for key in ("temperature", "top_p"):
        value = getattr(options, key)
        if value is not None and key in fields:
            update[key] = value
    if options.stop and "stop" in fields:
        update["stop"] = list(options.stop)
    return model.model_copy(update=update) if update else model


def chain_for(state: ServerState, options: Options) -> QAChain:
    """The shared chain, or one over the request's tuned model (cheap: the weights are shared)."""
    assert state.chain is not None and state.retriever is not None
    if options == Options():
        return state.chain
    return QAChain(state.settings, tuned_model(state, options), state.retriever)


def answer_events(
    state: ServerState, question: Question, cancel: threading.Event
) -> Iterator[Event]:
    chain = chain_for(state, question.options)
    return chain.stream(question.text, question.kbs, question.history, question.top_k, cancel)


def answer_json(state: ServerState, question: Question, cancel: threading.Event) -> dict[str, Any]:
    chain = chain_for(state, question.options)
    answer = chain.ask(question.text, question.kbs, question.history, question.top_k, cancel)
    return answer.to_json()


def chat_tokens(
    state: ServerState,
    messages: Sequence[ChatMessage],
    options: Options,
    cancel: threading.Event,
) -> Iterator[Event]:
    """Plain chat with the backend, no KB, as chain events: no sources, tokens, done."""
    model = tuned_model(state, options)
    yield SourcesEvent([])
    pieces: list[str] = []
    chunks = model.stream(langchain_messages(messages))
    try:
        for chunk in chunks:
            if cancel.is_set():
                break
            if chunk.text:
                pieces.append(chunk.text)
                yield TokenEvent(chunk.text)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # stop the generation now, not when the garbage collector gets to it
    yield DoneEvent("".join(pieces), False, Timings(), cancel.is_set())


def langchain_messages(messages: Sequence[ChatMessage]) -> list[BaseMessage]:
    converted: list[BaseMessage] = []
    for message in messages:
        if message.role in ("system", "developer"):
            converted.append(SystemMessage(message.text))
        elif message.role == "assistant":
            converted.append(AIMessage(message.text))
        else:  # user, and tool results: text for the model to read
            converted.append(HumanMessage(message.text))
    return converted


def split_conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[list[str]]]:
    """The last user message and the [question, answer] turns before it (system text aside)."""
    turns = [m for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user" or not turns[-1].text.strip():
        raise ApiError(422, "invalid_request", "the last message must be a non-empty user message")
    history: list[list[str]] = []
    pending: str | None = None
    for message in turns[:-1]:
        if message.role == "user":
            pending = message.text if pending is None else f"{pending}\n{message.text}"
        elif pending is not None:
            history.append([pending, message.text])
            pending = None
    return turns[-1].text, history
