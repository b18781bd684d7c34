"""`ChatGLM2Chat`: LangChain's chat-model interface over our ChatGLM2 model and tokenizer.

Messages map onto ChatGLM2's chat prompt: system text goes in front of the first question
shown, each human/AI pair is a past round, the last human message is the question. Text is
streamed token by token (whole characters only), stop strings end generation, and one lock per
loaded model keeps two threads from driving it at once (they would share its KV cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.language_models.chat_models import (
    BaseChatModel,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, model_validator

from kbqa.chatglm.chatglm2 import ChatGLM2
from kbqa.chatglm.streaming import StreamDecoder
from kbqa.chatglm.tokenizer import ChatGLM2Tokenizer
from kbqa.llm.errors import LLMUnavailable
from kbqa.llm.turns import messages_to_turns
from kbqa.settings import ChatGLM2Settings, LLMSettings

DType = Literal["fp16", "bf16", "int4", "int8", "fp32"]

# Settings dtype -> (activation dtype, quantize mode for the loader).
_DTYPES: dict[str, tuple[torch.dtype, str | None]] = {
    "fp16": (torch.float16, None),
    "bf16": (torch.bfloat16, None),
    "int4": (torch.float16, "int4"),
    "int8": (torch.float16, "int8"),
    "fp32": (torch.float32, None),
}

# One lock per loaded model, shared by every ChatGLM2Chat built over it.
_LOCKS: weakref.WeakKeyDictionary[ChatGLM2, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: ChatGLM2) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


# -- loading -------------------------------------------------------------------------------


def check_checkpoint(
    path: str | Path, dtype: str, device: str, ptuning_checkpoint: str | Path | None = None
) -> Path:
    """Everything that can be checked before loading; raises LLMUnavailable with one line."""
    if dtype not in _DTYPES:
        raise LLMUnavailable(f"unknown ChatGLM2 dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise LLMUnavailable(
            f"CUDA is not available; use dtype fp32 on cpu (asked for {dtype} on {device})"
        )
    if not str(path):
        raise LLMUnavailable("no ChatGLM2 checkpoint configured; set llm.chatglm2.path")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LLMUnavailable(f"ChatGLM2 checkpoint folder {folder} does not exist")
    missing = [n for n in ("config.json", "tokenizer.model") if not (folder / n).is_file()]
    if missing:
        raise LLMUnavailable(f"{folder} is not a ChatGLM2 checkpoint: no {' or '.join(missing)}")
    if ptuning_checkpoint and not Path(ptuning_checkpoint).expanduser().is_dir():
        raise LLMUnavailable(f"P-tuning checkpoint folder {ptuning_checkpoint} does not exist")
    return folder


def served_name(folder: Path, ptuning_checkpoint: Path | None) -> str:
    """The model's name in GET /v1/models and requests: the checkpoint folder's name, and
    for a P-tuned model `<base>-pt-<P-tuning folder>` (chatglm2-6b-pt-adgen), so that a
    client can tell the tuned model from its base."""
    if ptuning_checkpoint is None:
        return folder.name
    return f"{folder.resolve().name}-pt-{ptuning_checkpoint.resolve().name}"


# -- the chat model ------------------------------------------------------------------------


class ChatGLM2Chat(BaseChatModel):
    """ChatGLM2 as a LangChain chat model: invoke, stream, batch and their async forms.

    Per-call options (`model.invoke(msgs, max_tokens=..., temperature=...)`): max_tokens (or
    max_new_tokens), temperature, top_p, top_k, repetition_penalty, seed, and cancel (a
    threading.Event that ends generation when set). A prompt that cannot fit even without
    history raises `kbqa.chatglm.tokenizer.PromptTooLong` (a ValueError).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    chatglm: ChatGLM2 = Field(exclude=True, repr=False)
    tokenizer: ChatGLM2Tokenizer = Field(exclude=True, repr=False)
    model_name: str = Field(default="chatglm2-6b", alias="model")
    max_new_tokens: int = Field(default=256, ge=1, alias="max_tokens")
    temperature: float = Field(default=0.0, ge=0.0)
    """0 is greedy decoding."""
    top_p: float = Field(default=0.8, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    """0 disables top-k filtering."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    seed: int | None = None
    stop: list[str] | None = None
    context_tokens: int = Field(default=2048, ge=16)
    """Token budget of the prompt; older history rounds are dropped to fit it."""
    timeout: float | None = None
    """Seconds to wait while another call is using the model; None waits as long as it takes."""
    streaming: bool = False
    """Have invoke() go through the streaming path (LangChain's convention)."""

    @model_validator(mode="after")
    def _tokenizer_fits_model(self) -> ChatGLM2Chat:
        vocab = self.chatglm.config.padded_vocab_size
        if self.tokenizer.vocab_size > vocab:
            raise ValueError(
                f"tokenizer has {self.tokenizer.vocab_size} ids but the model only {vocab}"
            )
        return self

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        dtype: DType = "fp16",
        device: str = "cuda",
        ptuning_checkpoint: str | Path | None = None,
        devices: list[str] | None = None,
        **kwargs: Any,
    ) -> ChatGLM2Chat:
        """Load a Hugging Face chatglm2-6b (or -int4) folder; kwargs set generation defaults.
        devices: split the layers over these instead of `device` (kbqa/chatglm/devices.py)."""
        for one in devices or [device]:
            folder = check_checkpoint(path, dtype, one, ptuning_checkpoint)
        torch_dtype, quantize = _DTYPES[dtype]
        if devices:
            device = devices[0]
        if quantize and not str(device).startswith("cuda"):
            torch_dtype = torch.float32  # quantized weights, fp32 activations on the CPU
        ptuning = Path(ptuning_checkpoint).expanduser() if ptuning_checkpoint else None
        try:
            tokenizer = ChatGLM2Tokenizer.from_pretrained(folder)
            model = (
                ChatGLM2.from_pretrained(folder, None, torch_dtype, quantize, ptuning, devices)
                if devices
                else ChatGLM2.from_pretrained(folder, device, torch_dtype, quantize, ptuning)
            )
        # CheckpointError (a ValueError) for bad files, RuntimeError for CUDA out of memory.
        except (ValueError, OSError, RuntimeError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LLMUnavailable(f"cannot load ChatGLM2 from {folder}: {first_line}") from exc
        model.eval()
        kwargs.setdefault("model_name", served_name(folder, ptuning))
        return cls(chatglm=model, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_settings(
        cls, chatglm2: ChatGLM2Settings, llm: LLMSettings, **kwargs: Any
    ) -> ChatGLM2Chat:
        """Load the configured checkpoint; kwargs are further fields (a subclass's)."""
        return cls.from_path(
            chatglm2.path,
            dtype=chatglm2.dtype,
            device=chatglm2.device,
            ptuning_checkpoint=chatglm2.ptuning_checkpoint or None,
            devices=chatglm2.devices or None,
            max_new_tokens=llm.max_new_tokens,
            temperature=llm.temperature,
            top_p=llm.top_p,
            context_tokens=llm.context_tokens,
            **kwargs,
        )

    @property
    def _llm_type(self) -> str:
        return "chatglm2"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "context_tokens": self.context_tokens,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop or self.stop, **kwargs)
        params["ls_provider"] = "kbqa"
        max_tokens = kwargs.get("max_tokens") or kwargs.get("max_new_tokens")
        params["ls_max_tokens"] = max_tokens or self.max_new_tokens
        return params

    def get_token_ids(self, text: str) -> list[int]:
        # LangChain's default would fetch a GPT-2 tokenizer from the network.
        return self.tokenizer.encode(text, add_prefix=False)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Length of the whole ChatGLM2 prompt these messages make (no history dropped)."""
        turns = messages_to_turns(messages)
        return len(self.tokenizer.build_chat_input(turns.query, turns.history, None, turns.system))

    # -- generation ------------------------------------------------------------------------

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """This call's sampling options: per-call kwargs over the instance's defaults."""
        kwargs = dict(kwargs)
        kwargs.pop("stream", None)  # LangChain's own switch, already acted upon
        if "max_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
        options = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "cancel": None,
        }
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise TypeError(f"ChatGLM2Chat got unsupported options: {', '.join(unknown)}")
        options.update(kwargs)
        return options

    def _prompt_ids(self, messages: list[BaseMessage], max_new_tokens: int) -> list[int]:
        turns = messages_to_turns(messages)
        room = self.context_window - max_new_tokens
        if room < 1:
            raise ValueError(
                f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                f"{self.context_window} positions"
            )
        budget = min(self.context_tokens, room)
        return self.tokenizer.build_chat_input(turns.query, turns.history, budget, turns.system)

    def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        cancel: threading.Event,
        kwargs: dict[str, Any],
    ) -> Generator[ChatGenerationChunk, None, None]:
        """Text chunks as tokens complete characters, then one final chunk with usage."""
        options = self._options(kwargs)
        user_cancel: threading.Event | None = options.pop("cancel")
        stop_strings = self.stop if stop is None else stop
        prompt = self._prompt_ids(messages, options["max_new_tokens"])
        decoder = StreamDecoder(self.tokenizer, stop_strings or ())

        def cancelled() -> bool:
            return cancel.is_set() or (user_cancel is not None and user_cancel.is_set())

        n_generated = 0
        with self._generation(prompt, options, cancelled) as tokens:
            if tokens is None:
                return  # cancelled while waiting for the model: nobody is listening any more
            try:
                for token_id in tokens:
                    n_generated += 1
                    text = decoder.push(token_id)
                    if text:
                        yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                    if decoder.stopped:
                        break
            finally:
                # Runs too when the consumer stops early (generator closed): end generation
                # at once; leaving the `with` lets the next caller have the model.
                cancel.set()
        text = decoder.finish()
        if decoder.stopped:
            reason = "stop"
        elif n_generated >= options["max_new_tokens"]:
            reason = "length"
        else:
            reason = "cancelled" if cancelled() else "stop"  # eos (the model ended its answer)
        usage = UsageMetadata(
            input_tokens=len(prompt),
            output_tokens=n_generated,
            total_tokens=len(prompt) + n_generated,
        )
        metadata = {"model_name": self.model_name, "finish_reason": reason}
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=text,
                usage_metadata=usage,
                response_metadata=metadata,
                chunk_position="last",
            ),
            generation_info=metadata,
        )

    @contextlib.contextmanager
    def _generation(
        self, prompt: list[int], options: dict[str, Any], cancelled: Callable[[], bool]
    ) -> Iterator[Iterator[int] | None]:
        """The new token ids of one generation (None: cancelled before it could start).

        Here one generation at a time holds the model (the lock); BatchedChatGLM2Chat
        (chatglm2_batched.py) submits to a continuous-batching engine instead.
        """
        lock = model_lock(self.chatglm)
        if not self._acquire(lock, cancelled):
            yield None
            return
        tokens: Iterator[int] | None = None
        try:
            tokens = self.chatglm.generate(
                prompt, eos_token_ids=[self.tokenizer.eos_id], cancel=cancelled, **options
            )
            yield tokens
        finally:
            if isinstance(tokens, Generator):
                tokens.close()
            lock.release()

    @property
    def context_window(self) -> int:
        """Positions one generation may use (prompt + answer)."""
        return self.chatglm.config.seq_length

    def _acquire(self, lock: threading.Lock, cancelled: Callable[[], bool]) -> bool:
        """Wait for the model, in short slices so that a cancelled caller stops waiting."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not lock.acquire(timeout=0.05):
            if cancelled():
                return False
            if deadline is not None and time.monotonic() > deadline:
                raise LLMUnavailable(
                    f"ChatGLM2 is busy with another request (waited {self.timeout} s)"
                )
        return True

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # closing(): a consumer that stops early ends generation now, not when collected.
        with contextlib.closing(self._chunks(messages, stop, threading.Event(), kwargs)) as chunks:
            for chunk in chunks:
                if run_manager and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Generation runs in a worker thread and hands chunks over through a queue; when the
        # consumer stops (or its task is cancelled) the event ends generation in that thread.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ChatGenerationChunk | BaseException | None] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: ChatGenerationChunk | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to hand it to
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def produce() -> None:
            try:
                for chunk in self._chunks(messages, stop, cancel, kwargs):
                    put(chunk)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put(exc)
            finally:
                put(None)

        worker = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if run_manager and item.text:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            cancel.set()
            # Wait for the worker to finish its step (or stop waiting for the model) and
            # release it, so the next call finds the model free.
            await asyncio.shield(worker)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


__all__ = ["ChatGLM2Chat", "check_checkpoint", "model_lock"]
