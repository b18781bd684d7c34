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
import dataclasses
import logging
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from kbqa.chatglm import parallel_engine
from kbqa.chatglm.batching import BatchEngine
from kbqa.chatglm.parallel_engine import RankLost
from kbqa.chatglm.sampling import SamplingParams
from kbqa.chatglm.tensor_parallel import ParallelModel
from kbqa.llm.chatglm2 import ChatGLM2Chat
from kbqa.llm.errors import LLMUnavailable
from kbqa.settings import ChatGLM2Settings, LLMSettings

log = logging.getLogger(__name__)


class BatchedChatGLM2Chat(ChatGLM2Chat):
    """ChatGLM2Chat over a continuous-batching engine. Without an `engine` argument one is
    built over `chatglm` (max_batch rows of context_tokens + max_new_tokens positions) and
    started; it stops when this object is garbage-collected or `close()` is called."""

    max_batch: int = Field(default=16, ge=1)
    """Sequences decoded together (each holds a KV-cache row)."""
    max_seq: int = Field(default=0, ge=0)
    """Positions per cache row; 0 = context_tokens + max_new_tokens."""
    engine: BatchEngine | None = Field(default=None, exclude=True, repr=False)
    tensor_parallel: int = Field(default=1, ge=1)
    """Ranks of tensor parallelism (kbqa/chatglm/parallel_engine.py): this process is rank 0
    over `chatglm`, which it shards; it starts the other ranks, which load `parallel_model`."""
    parallel_model: ParallelModel | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _start_engine(self) -> BatchedChatGLM2Chat:
        if self.engine is None:
            positions = self.max_seq or self.context_tokens + self.max_new_tokens
            positions = min(positions, self.chatglm.config.seq_length)
            # On a GPU the engine compiles its kernels and captures its smallest decode graph
            # before it serves (seconds); other shapes are captured when first used.
            options: dict[str, Any] = {
                "max_batch": self.max_batch,
                "max_seq": positions,
                "warm_up": self.chatglm.device.type == "cuda",
            }
            engine = (
                self._parallel_engine(options)
                if self.tensor_parallel > 1
                else BatchEngine(self.chatglm, **options)
            )
            if self.chatglm.device_map is not None:  # a layer split: so is the engine's cache
                _log_cache_by_device(engine)
            self.engine = engine.start()
            weakref.finalize(self, engine.close)
        return self

    def _parallel_engine(self, options: dict[str, Any]) -> BatchEngine:
        if self.parallel_model is None:
            raise ValueError("tensor_parallel > 1 needs parallel_model (how the ranks load it)")
        # The other ranks load what rank 0 loaded, in its dtype (fp32 for int4 on the CPU).
        spec = dataclasses.replace(self.parallel_model, dtype=self.chatglm.dtype)
        try:
            return parallel_engine.start(self.chatglm, spec, self.tensor_parallel, **options)
        except (ValueError, RuntimeError) as exc:  # no GPUs enough, a rank that cannot load
            # One line: a rank's report is its traceback, whose last line is the error.
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            detail = lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
            raise LLMUnavailable(
                f"cannot start {self.tensor_parallel} tensor-parallel ranks: {detail}"
            ) from exc

    @classmethod
    def from_settings(
        cls, chatglm2: ChatGLM2Settings, llm: LLMSettings, **kwargs: Any
    ) -> BatchedChatGLM2Chat:
        if chatglm2.tensor_parallel > 1:
            quantize = chatglm2.dtype if chatglm2.dtype in ("int4", "int8") else None
            path = Path(chatglm2.path).expanduser()
            kwargs.update(
                tensor_parallel=chatglm2.tensor_parallel,
                parallel_model=ParallelModel(path=path, quantize=quantize),
            )
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
        try:
            request = self.engine.submit(
                prompt,
                max_new_tokens=options["max_new_tokens"],
                params=params,
                stop_ids=[self.tokenizer.eos_id],
                cancel=cancelled,
            )
        except RankLost as e:
            raise LLMUnavailable(str(e)) from e
        try:
            yield _unavailable_on_rank_loss(iter(request))
        finally:
            request.cancel()  # a no-op when it finished; else it leaves the batch next step


def _log_cache_by_device(engine: BatchEngine) -> None:
    """One line at start: the bytes of the engine's KV cache on each device (the weights'
    were logged at load, kbqa/chatglm/devices.py)."""
    sizes: dict[str, int] = {}
    for _, k, v in engine.cache.ranges:
        size = k.numel() * k.element_size() + v.numel() * v.element_size()
        sizes[str(k.device)] = sizes.get(str(k.device), 0) + size
    parts = "; ".join(f"{device} {size / 2**30:.2f} GiB" for device, size in sizes.items())
    log.info("ChatGLM2 batching engine, KV cache by device: %s", parts)


def _unavailable_on_rank_loss(tokens: Iterator[int]) -> Iterator[int]:
    """A tensor-parallel rank that died ends the generation as the model being unavailable
    (HTTP 503 `llm_unavailable`), not as a bug of the server."""
    try:
        yield from tokens
    except RankLost as e:
        raise LLMUnavailable(str(e)) from e


__all__ = ["BatchedChatGLM2Chat"]
