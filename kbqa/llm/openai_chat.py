"""The `openai` backend: any OpenAI-compatible chat server (vLLM, another `kbqa serve`, OpenAI).

LangChain's ChatOpenAI does the protocol, streaming included, and the `openai` client under it
retries refused connections, timeouts, 408/409/429 and 5xx answers with exponential backoff
(0.5 s doubling to at most 8 s, less up to 25 % jitter; a `Retry-After` of up to 60 s is
honoured instead). What it raises when it gives up is a stack of client exceptions; here each
becomes an LLMUnavailable with one line that names the server, which the CLI and the HTTP
server already report (exit 2, HTTP 503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import openai
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI

from kbqa.llm.errors import LLMUnavailable
from kbqa.settings import LLMSettings

_RETRIED = {408, 409, 429}  # and every 5xx: the statuses the openai client retries


class RemoteChat(ChatOpenAI):
    """ChatOpenAI whose failures are one-line LLMUnavailable errors naming the server."""

    @classmethod
    def from_settings(cls, llm: LLMSettings) -> RemoteChat:
        remote = llm.openai
        return cls(
            base_url=remote.base_url,
            model=remote.model,
            api_key=remote.api_key,  # type: ignore[arg-type]
            timeout=remote.timeout_s,
            max_retries=remote.max_retries,
            temperature=llm.temperature,
            top_p=llm.top_p,
            max_completion_tokens=llm.max_new_tokens,
            # Ask for the remote's token counts on streams too (`stream_options.include_usage`,
            # which vLLM, llama.cpp, Ollama and kbqa itself honour; a server that does not know
            # it ignores it and reports nothing, and then nobody reports usage).
            stream_usage=True,
        )

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._one_line_errors():
            return super()._generate(*args, **kwargs)

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        with self._one_line_errors():
            yield from super()._stream(*args, **kwargs)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        with self._one_line_errors():
            return await super()._agenerate(*args, **kwargs)

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        with self._one_line_errors():
            async for chunk in super()._astream(*args, **kwargs):
                yield chunk

    @contextmanager
    def _one_line_errors(self) -> Iterator[None]:
        try:
            yield
        except openai.APIError as exc:
            raise LLMUnavailable(self._describe(exc)) from exc

    def _describe(self, exc: openai.APIError) -> str:
        where = f"the LLM server at {self.openai_api_base}"
        retries = f" (after {self.max_retries} retries)" if self.max_retries else ""
        if isinstance(exc, openai.APITimeoutError):
            return (
                f"{where} did not answer within {self.request_timeout} s{retries}; "
                "raise llm.openai.timeout_s if it is only slow"
            )
        if isinstance(exc, openai.APIConnectionError):
            return f"cannot reach {where}: {_first_line(_root_cause(exc))}{retries}"
        if isinstance(exc, openai.APIStatusError):
            body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else exc.body
            detail = body.get("message") if isinstance(body, dict) else body
            retried = exc.status_code in _RETRIED or exc.status_code >= 500
            return (
                f"{where} answered HTTP {exc.status_code}: "
                f"{_first_line(detail or exc.message)}{retries if retried else ''}"
            )
        return f"{where} failed: {_first_line(exc.message)}"


def _first_line(value: object) -> str:
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    return lines[0] if lines else type(value).__name__


def _root_cause(exc: BaseException) -> BaseException:
    """The transport error under the client's "Connection error." (e.g. connection refused)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen and str(exc.__cause__):
        exc = exc.__cause__
        seen.add(id(exc))
    return exc
