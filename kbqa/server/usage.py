"""Token usage of one request, as the backend itself counted it (OpenAI's `usage`).

The backends report what each model call read and wrote in the `usage_metadata` of their last
chunk: the bundled model and ChatGLM2 count the token ids of the prompt they actually built
(history dropped to fit included) and the tokens they generated; the `openai` backend passes on
what the remote server reports. A request's usage is the sum over its model calls: the answer,
and the rewrite of a follow-up question where the chain has the model do one.

A backend that does not report (a remote server that ignores `stream_options`) leaves the
usage unknown, and the response says `null` rather than a guess. A request answered without the
model (a refusal: nothing relevant in the KB) used no tokens: zeros.

The chain calls the model without a callbacks argument, so a request's meter reaches those
calls through a context variable that LangChain consults whenever it configures a run
(`register_configure_hook`, the mechanism of its own `get_usage_metadata_callback`). Each
generation job runs in a fresh `contextvars` context (generation.WorkerThreads), so a meter
sees the model calls of its own request only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook

from kbqa.server.schemas import Usage

T = TypeVar("T")
E = TypeVar("E")

_current: ContextVar[UsageMeter | None] = ContextVar("kbqa_usage_meter", default=None)


class UsageMeter(BaseCallbackHandler):
    """Adds up the usage the model calls of one request report."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.known = True
        """False once a model call ended without reporting its usage."""

    @property
    def usage(self) -> Usage | None:
        if not self.known:
            return None
        total = self.prompt_tokens + self.completion_tokens
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=total,
        )

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        reported = _reported_usage(response)
        with self._lock:
            if reported is None:
                self.known = False
            else:
                self.prompt_tokens += reported[0]
                self.completion_tokens += reported[1]

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        # A call cut short (cancelled, failed) never got to its usage chunk.
        with self._lock:
            self.known = False


def _reported_usage(response: LLMResult) -> tuple[int, int] | None:
    """(input tokens, output tokens) of a finished model call, if the backend said."""
    generations = response.generations[0] if response.generations else []
    generation = generations[0] if generations else None
    if not isinstance(generation, ChatGeneration) or not isinstance(generation.message, AIMessage):
        return None
    usage = generation.message.usage_metadata
    if not usage:
        return None
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


register_configure_hook(_current, inheritable=True)


@dataclass(frozen=True)
class Metered:
    """The last item of a metered stream: the request's usage (None: not reported)."""

    usage: Usage | None


def metered(produce: Callable[[T], Iterator[E]], arg: T) -> Iterator[E | Metered]:
    """What `produce(arg)` yields, then the usage of the model calls it made.

    Iterate it in one thread from start to end or close (the gate's worker does): the meter is
    set in that thread's context while `produce` runs.
    """
    meter = UsageMeter()
    token = _current.set(meter)
    try:
        yield from produce(arg)
    finally:
        _current.reset(token)
    yield Metered(meter.usage)
