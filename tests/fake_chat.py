"""The one fake chat model of the tests, for tests where the model itself is not under test.

`FakeChat` is a real LangChain chat model (the server, the chain and the OpenAI routes drive it
as they drive the bundled one) whose answer is scripted: `reply(messages)` gives the text, by
default the last line of the prompt (the chain's prompt ends with the question, so each answer
names its own asker). It streams that text a word at a time and lets a test:

- see what it was asked (`calls`) and how many tokens it produced (`produced`);
- prove a code path never calls it (`fail=True`);
- hold a generation mid-answer (`hold_after`): tokens past that many wait until the test calls
  `release()`, so "is it still generating?" is a state the test controls, never a race against
  a clock;
- wait for a condition on it (`wait_until`) instead of sleeping;
- see a stream closed early by its consumer (`closed` counts streams ended, `finished` counts
  those that ran to the end);
- get usage as the real backends report it (`report_usage`: words counted as tokens).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr

from tests.waiting import HANG_GUARD_S

HOLD_GUARD_S = 2 * HANG_GUARD_S
"""How long a held token waits for `release()` before failing its generation. Longer than any
wait of the test's own: a server that never cancels must fail the test's wait, not end the
held generation and so look as if it had stopped it."""


def echo_last_line(messages: list[BaseMessage]) -> str:
    """The last line of the last message: the question, in the chain's prompts."""
    lines = messages[-1].text.strip().splitlines()
    return lines[-1] if lines else ""


def tokens_of(text: str) -> list[str]:
    """`text` in word tokens, each with the whitespace before it; they join back to `text`."""
    return re.findall(r"\s*\S+|\s+\Z", text)


class _Progress:
    """What the model did, in one object that copies of the model share: the server makes a
    `model_copy` per request to apply its settings (max tokens, temperature)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.produced = 0
        self.closed = 0
        self.finished = 0
        self.held = 0
        self.released = False

    def count(self, what: str) -> None:
        with self.changed:
            setattr(self, what, getattr(self, what) + 1)
            self.changed.notify_all()

    def wait_for_release(self) -> None:
        with self.changed:
            self.held += 1
            self.changed.notify_all()
            try:
                if not self.changed.wait_for(lambda: self.released, timeout=HOLD_GUARD_S):
                    raise AssertionError("a held generation was never released")
            finally:
                self.held -= 1
                self.changed.notify_all()


class FakeChat(BaseChatModel):
    model_name: str = "echo-test"
    reply: Callable[[list[BaseMessage]], str] = echo_last_line
    fail: bool = False
    """Any call is an error: for proving that a code path never calls the model."""
    max_tokens: int = 100_000
    report_usage: bool = False
    hold_after: int | None = None
    """Each call's tokens past this many wait for `release()`."""
    holds: Callable[[list[BaseMessage]], bool] = lambda messages: True
    """Which calls `hold_after` applies to (all by default)."""
    on_token: Callable[[int], None] | None = None
    """Called with each token's index before it is yielded (e.g. to cancel mid-answer)."""
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    usages: list[tuple[int, int]] = Field(default_factory=list)
    """(input, output) tokens of each call that reported usage."""

    _progress: _Progress = PrivateAttr(default_factory=lambda: _Progress())

    @property
    def _llm_type(self) -> str:
        return "fake-chat"

    @property
    def produced(self) -> int:
        """Tokens yielded so far, over all calls."""
        return self._progress.produced

    @property
    def closed(self) -> int:
        """Streams that ended, whole or closed early by their consumer."""
        return self._progress.closed

    @property
    def finished(self) -> int:
        """Streams that yielded their whole answer."""
        return self._progress.finished

    @property
    def held(self) -> int:
        """Generations waiting at a held token right now."""
        return self._progress.held

    def release(self) -> None:
        """Let every held generation, and any later one, run to its end."""
        with self._progress.changed:
            self._progress.released = True
            self._progress.changed.notify_all()

    def hold(self) -> None:
        """Hold again: undo `release()` for generations that reach `hold_after` from now on."""
        with self._progress.changed:
            self._progress.released = False

    def wait_until(self, condition: Callable[[FakeChat], bool], what: str) -> None:
        """Block until `condition(self)` holds; it is re-checked whenever the model's state
        changes (a token, a stream ending, a hold). The timeout only bounds a hang."""
        with self._progress.changed:
            if not self._progress.changed.wait_for(lambda: condition(self), timeout=HANG_GUARD_S):
                raise AssertionError(f"the fake chat model never got to: {what}")

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.fail:
            raise AssertionError("the chat model must not be called here")
        self.calls.append(messages)
        # An empty reply is one empty token: LangChain rejects a stream that yields nothing.
        tokens = tokens_of(self.reply(messages))[: self.max_tokens] or [""]
        hold_after = self.hold_after if self.holds(messages) else None
        try:
            for i, token in enumerate(tokens):
                if hold_after is not None and i >= hold_after:
                    self._progress.wait_for_release()
                if self.on_token is not None:
                    self.on_token(i)
                self._progress.count("produced")
                yield ChatGenerationChunk(message=AIMessageChunk(content=token))
            if self.report_usage:
                read = sum(len(m.text.split()) for m in messages)
                self.usages.append((read, len(tokens)))
                usage = UsageMetadata(
                    input_tokens=read, output_tokens=len(tokens), total_tokens=read + len(tokens)
                )
                yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage))
            self._progress.count("finished")
        finally:
            self._progress.count("closed")

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
