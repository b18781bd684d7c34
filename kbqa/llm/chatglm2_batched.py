"""`BatchedChatGLM2Chat`: ChatGLM2Chat whose generations share the GPU by continuous batching.

Where ChatGLM2Chat lets one generation at a time hold the model, this one submits each to a
`BatchEngine` (kbqa/chatglm/batching.py): concurrent calls (threads, async tasks, HTTP
requests) join the running batch at its next step and stream their own tokens. Everything
else (prompt building, stop strings, usage, cancellation) is ChatGLM2Chat's.

The server admits `kbqa.llm.factory.generation_concurrency(settings)` (max_batch) generations
at once; were more submitted, they would wait inside the engine, in order.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import Field, model_validator

from kbqa.chatglm.batching import BatchEngine
from kbqa.chatglm.sampling import SamplingParams
from kbqa.llm.chatglm2 import ChatGLM2Chat
from kbqa.settings import ChatGLM2Settings, LLMSettings


class BatchedChatGLM2Chat(ChatGLM2Chat):
    """ChatGLM2Chat over a continuous-batching engine. Without an `engine` argument one is
    built over `chatglm` (max_batch rows of context_tokens + max_new_tokens positions) and
    started; it stops when this object is garbage-collected or `close()` is called."""

    max_batch: int = Field(default=16, ge=1)
    """Sequences decoded together (each holds a KV-cache row)."""
    max_seq: int = Field(default=0, ge=0)
    """Positions per cache row; 0 = context_tokens + max_new_tokens."""
    engine: BatchEngine | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _start_engine(self) -> BatchedChatGLM2Chat:
        if self.engine is None:
            positions = self.max_seq or self.context_tokens + self.max_new_tokens
            positions = min(positions, self.chatglm.config.seq_length)
            # On a GPU the engine compiles its kernels and captures its smallest decode graph
            # before it serves (seconds); other shapes are captured when first used.
            engine = BatchEngine(
                self.chatglm,
                max_batch=self.max_batch,
                max_seq=positions,
                warm_up=self.chatglm.device.type == "cuda",
            )
            self.engine = engine.start()
            weakref.finalize(self, engine.close)
        return self

    @classmethod
    def from_settings(
        cls, chatglm2: ChatGLM2Settings, llm: LLMSettings, **kwargs: Any
    ) -> BatchedChatGLM2Chat:
        chat = super().from_settings(
            chatglm2, llm, max_batch=chatglm2.max_batch, max_seq=chatglm2.max_seq, **kwargs
        )
        assert isinstance(chat, cls)
        return chat

    @property
    def ready(self) -> bool:
        """False while the engine compiles its kernels (its warm-up, on a GPU)."""
        return self.engine is not None and self.engine.ready

    @property
    def context_window(self) -> int:
        assert self.engine is not None
        return self.engine.max_seq

    def close(self) -> None:
        """Stop the engine; unfinished generations end as cancelled."""
        if self.engine is not None:
            self.engine.close()

    @contextlib.contextmanager
    def _generation(
        self, prompt: list[int], options: dict[str, Any], cancelled: Callable[[], bool]
    ) -> Iterator[Iterator[int] | None]:
        assert self.engine is not None
        params = SamplingParams(
            temperature=options["temperature"],
            top_p=options["top_p"],
            top_k=options["top_k"],
            repetition_penalty=options["repetition_penalty"],
            seed=options["seed"],
        )
        request = self.engine.submit(
            prompt,
            max_new_tokens=options["max_new_tokens"],
            params=params,
            stop_ids=[self.tokenizer.eos_id],
            cancel=cancelled,
        )
        try:
            yield iter(request)
        finally:
            request.cancel()  # a no-op when it finished; else it leaves the batch next step


__all__ = ["BatchedChatGLM2Chat"]
