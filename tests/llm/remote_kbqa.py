"""A second `kbqa serve` for the openai-backend tests, standing in for vLLM (run as a script).

remote_kbqa.py HOME PORT API_KEY

The real app (`create_app` under uvicorn, OpenAI-compatible `/v1/chat/completions`) with a
small deterministic chat model injected: what is tested is the protocol, not the model.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from kbqa.server.app import create_app
from kbqa.settings import load_settings

MODEL_NAME = "echo-remote"


class EchoModel(BaseChatModel):
    """Answers "echo: <the last message>", streamed word by word, at most `max_tokens` words,
    and reports its usage as the real backends do, counting words as tokens."""

    model_name: str = MODEL_NAME
    max_tokens: int = 1000

    @property
    def _llm_type(self) -> str:
        return MODEL_NAME

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        words = ["echo:", *messages[-1].text.split()][: self.max_tokens]
        for i, word in enumerate(words):
            text = word if i == 0 else f" {word}"
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        read = sum(len(m.text.split()) for m in messages)
        usage = UsageMetadata(
            input_tokens=read, output_tokens=len(words), total_tokens=read + len(words)
        )
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))


def main() -> None:
    home, port, api_key = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    settings = load_settings(home, overrides={"server": {"api_key": api_key}})
    app = create_app(settings, chat_model=EchoModel())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
