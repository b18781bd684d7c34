"""ChatGLM2Chat on the tiny random ChatGLM2 and a SentencePiece model trained at test time
(tests/llm/conftest.py).

The standard langchain-tests suites run first; our own tests follow.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from kbqa.chatglm import ChatGLM2, ChatGLM2Tokenizer, PromptTooLong
from kbqa.chatglm.config import PRESETS
from kbqa.llm import ChatGLM2Chat, LLMUnavailable, chatglm2
from kbqa.llm.chatglm2 import model_lock
from kbqa.llm.turns import messages_to_turns
from kbqa.settings import ChatGLM2Settings, LLMSettings
from tests.waiting import HANG_GUARD_S

Parts = tuple[ChatGLM2, ChatGLM2Tokenizer]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _TinyParams:
    """Hands the session's tiny model to langchain-tests, which builds the chat model itself."""

    parts: Parts

    @pytest.fixture(autouse=True)
    def _use_tiny(self, tiny_parts: Parts) -> None:
        self.parts = tiny_parts

    @property
    def chat_model_class(self) -> type[ChatGLM2Chat]:
        return ChatGLM2Chat

    @property
    def chat_model_params(self) -> dict[str, Any]:
        model, tokenizer = self.parts
        return {"chatglm": model, "tokenizer": tokenizer}

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model; a per-call model name cannot switch it


class TestChatGLM2ChatStandardUnit(_TinyParams, ChatModelUnitTests):
    pass


class TestChatGLM2ChatStandardIntegration(_TinyParams, ChatModelIntegrationTests):
    pass


# -- our own tests ---------------------------------------------------------------------------


@pytest.fixture
def chat(tiny_parts: Parts) -> ChatGLM2Chat:
    model, tokenizer = tiny_parts
    return ChatGLM2Chat(chatglm=model, tokenizer=tokenizer, max_tokens=24)


class GenerateSpy:
    """Wraps model.generate: records prompts and counts the ids the caller pulled."""

    def __init__(self, model: ChatGLM2) -> None:
        self.inner = model.generate
        self.prompts: list[list[int]] = []
        self.pulled = 0

    def __call__(self, input_ids: list[int], **kwargs: Any) -> Iterator[int]:
        self.prompts.append(list(input_ids))
        for token_id in self.inner(input_ids, **kwargs):
            self.pulled += 1
            yield token_id


@pytest.fixture
def spy(tiny_parts: Parts, monkeypatch: pytest.MonkeyPatch) -> GenerateSpy:
    model = tiny_parts[0]
    spy = GenerateSpy(model)
    monkeypatch.setattr(model, "generate", spy)
    return spy


def test_messages_map_to_system_history_and_query() -> None:
    turns = messages_to_turns(
        [
            SystemMessage("Be brief."),
            HumanMessage("q1"),
            AIMessage("a1"),
            HumanMessage("q2a"),
            HumanMessage("q2b"),
            AIMessage("a2a"),
            AIMessage([{"type": "text", "text": "a2b"}]),
            ChatMessage(role="system", content="Cite sources."),
            ChatMessage(role="user", content="q3"),
        ]
    )
    assert turns.system == "Be brief.\n\nCite sources."
    assert turns.history == [("q1", "a1"), ("q2a\n\nq2b", "a2a\n\na2b")]
    assert turns.query == "q3"
    assert messages_to_turns([AIMessage("hi"), HumanMessage("q")]).history == [("", "hi")]


@pytest.mark.parametrize(
    "messages",
    [[], [HumanMessage("q"), AIMessage("a")], [SystemMessage("s")]],
)
def test_conversation_must_end_with_a_question(messages: list[Any]) -> None:
    with pytest.raises(ValueError, match="last message"):
        messages_to_turns(messages)


def test_non_text_content_is_refused() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    with pytest.raises(ValueError, match="text only"):
        messages_to_turns([HumanMessage([image])])


def test_prompt_is_chatglm2_format(chat: ChatGLM2Chat, spy: GenerateSpy) -> None:
    chat.invoke([SystemMessage("S"), HumanMessage("你好"), AIMessage("嗨"), HumanMessage("再见")])
    assert chat.tokenizer.decode(spy.prompts[0]) == (
        "[Round 1]\n\n问：S\n\n你好\n\n答：嗨\n\n[Round 2]\n\n问：再见\n\n答："
    )
    assert spy.prompts[0][:2] == chat.tokenizer.prefix_ids


def test_old_history_dropped_to_fit_context(tiny_parts: Parts, spy: GenerateSpy) -> None:
    model, tokenizer = tiny_parts
    history = [("question one " * 5, "answer one " * 5), ("q2", "a2")]
    fits = len(tokenizer.build_chat_input("q3", history[1:]))
    chat = ChatGLM2Chat(chatglm=model, tokenizer=tokenizer, max_tokens=4, context_tokens=fits)
    first = [HumanMessage(history[0][0]), AIMessage(history[0][1])]
    chat.invoke([*first, HumanMessage("q2"), AIMessage("a2"), HumanMessage("q3")])
    assert tokenizer.decode(spy.prompts[0]).startswith("[Round 1]\n\n问：q2\n\n答：a2")
    with pytest.raises(PromptTooLong):
        chat.invoke("a question far too long for such a small context " * 5)


def test_token_counts_use_our_tokenizer(chat: ChatGLM2Chat, spy: GenerateSpy) -> None:
    assert chat.get_num_tokens("你好 world") == len(chat.tokenizer.encode("你好 world", False))
    messages = [SystemMessage("S"), HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2")]
    chat.invoke(messages, max_tokens=1)
    assert chat.get_num_tokens_from_messages(messages) == len(spy.prompts[0])


def test_usage_and_length_finish(chat: ChatGLM2Chat, spy: GenerateSpy) -> None:
    result = chat.invoke("Hello", max_tokens=5)
    assert result.usage_metadata == {
        "input_tokens": len(spy.prompts[0]),
        "output_tokens": spy.pulled,
        "total_tokens": len(spy.prompts[0]) + spy.pulled,
    }
    assert spy.pulled <= 5
    if spy.pulled == 5:
        assert result.response_metadata["finish_reason"] == "length"
    assert result.response_metadata["model_name"] == "chatglm2-6b"


def test_stop_string_cuts_the_answer(chat: ChatGLM2Chat) -> None:
    full = str(chat.invoke("Hello").content)  # greedy, so the same text every time
    stop = full[len(full) // 2 :][:2]
    assert stop.strip()
    cut = chat.invoke("Hello", stop=[stop])
    assert cut.content == full[: full.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    streamed = "".join(str(c.content) for c in chat.stream("Hello", stop=[stop]))
    assert streamed == cut.content


def test_stream_is_token_by_token(chat: ChatGLM2Chat) -> None:
    chunks = list(chat.stream("Hello"))
    assert len([c for c in chunks if c.content]) > 3
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata is not None
    assert "".join(str(c.content) for c in chunks) == chat.invoke("Hello").content


def test_sampling_options_and_seed(chat: ChatGLM2Chat) -> None:
    options: dict[str, Any] = {"temperature": 0.9, "top_p": 0.9, "top_k": 50, "seed": 7}
    first = chat.invoke("Hello", **options)
    assert chat.invoke("Hello", **options).content == first.content
    with pytest.raises(TypeError, match="unsupported options: frequency_penalty"):
        chat.invoke("Hello", frequency_penalty=1.0)


def test_stopping_a_stream_ends_generation_and_frees_the_model(
    chat: ChatGLM2Chat, spy: GenerateSpy
) -> None:
    for chunk in chat.stream("Hello", max_tokens=200):
        if chunk.content:
            break
    assert spy.pulled < 10
    assert not model_lock(chat.chatglm).locked()


async def test_stopping_an_async_stream_ends_generation(
    chat: ChatGLM2Chat, spy: GenerateSpy
) -> None:
    stream = cast(AsyncGenerator[AIMessageChunk, None], chat.astream("Hello", max_tokens=1500))
    async for chunk in stream:
        if chunk.content:
            break
    await stream.aclose()
    # LangChain's wrapper leaves our generator to the event loop's async-generator finaliser,
    # which closes it on a following loop iteration.
    async with asyncio.timeout(HANG_GUARD_S):  # bounds a hang only
        while model_lock(chat.chatglm).locked():
            await asyncio.sleep(0.01)
    assert spy.pulled < 1500


async def test_cancelling_an_async_call_ends_generation(
    chat: ChatGLM2Chat, spy: GenerateSpy
) -> None:
    task = asyncio.create_task(chat.ainvoke("Hello", max_tokens=2000))
    async with asyncio.timeout(HANG_GUARD_S):  # bounds a hang only
        while spy.pulled < 2:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spy.pulled < 2000
    assert not model_lock(chat.chatglm).locked()


def test_cancel_event(chat: ChatGLM2Chat) -> None:
    cancel = threading.Event()
    cancel.set()
    result = chat.invoke("Hello", cancel=cancel)
    assert result.content == ""
    assert result.response_metadata["finish_reason"] == "cancelled"


def test_one_generation_at_a_time(chat: ChatGLM2Chat, tiny_parts: Parts) -> None:
    # Threads share the model (and its KV cache); the lock serialises them, so a batch gives
    # every prompt the answer it gets alone.
    alone = [chat.invoke(q).content for q in ("Hello", "Hey", "你好")]
    assert [m.content for m in chat.batch(["Hello", "Hey", "你好"])] == alone
    other = ChatGLM2Chat(chatglm=tiny_parts[0], tokenizer=tiny_parts[1], timeout=0.05)
    with model_lock(chat.chatglm), pytest.raises(LLMUnavailable, match="busy"):
        other.invoke("Hello")


class TriedLock:
    """The model's lock, telling when a caller has started waiting for it."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.tried = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.tried.set()
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()


async def test_a_call_cancelled_while_waiting_for_the_model_stops_waiting(
    chat: ChatGLM2Chat, spy: GenerateSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = TriedLock(model_lock(chat.chatglm))
    monkeypatch.setitem(chatglm2._LOCKS, chat.chatglm, lock)
    lock.lock.acquire()  # another request holds the model
    try:
        task = asyncio.create_task(chat.ainvoke("Hello"))
        assert await asyncio.to_thread(lock.tried.wait, HANG_GUARD_S), "it never waited"
        task.cancel()
        # Were the wait not cut short, the task would never end: the model stays held.
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=HANG_GUARD_S)
    finally:
        lock.release()
    assert spy.prompts == []  # it never reached the model


async def test_async_batch_matches_sync(chat: ChatGLM2Chat) -> None:
    alone = [chat.invoke(q).content for q in ("Hello", "Hey")]
    assert [m.content for m in await chat.abatch(["Hello", "Hey"])] == alone


def test_tokenizer_larger_than_model_is_refused(tiny_parts: Parts) -> None:
    tokenizer = tiny_parts[1]
    small = ChatGLM2.from_config({**PRESETS["tiny"], "padded_vocab_size": 64}, device="cpu")
    with pytest.raises(ValueError, match="tokenizer has"):
        ChatGLM2Chat(chatglm=small, tokenizer=tokenizer)


# -- loading from a checkpoint folder ------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the checkpoint was loaded before validation failed")

    monkeypatch.setattr(ChatGLM2, "from_pretrained", refuse)


@pytest.mark.usefixtures("no_loading")
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int4", "int8"])
def test_gpu_dtype_without_cuda_fails_before_loading(
    tiny_checkpoint: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LLMUnavailable, match="CUDA is not available; use dtype fp32 on cpu"):
        ChatGLM2Chat.from_path(tiny_checkpoint, dtype=dtype, device="cuda")  # type: ignore[arg-type]


@pytest.mark.usefixtures("no_loading")
def test_bad_paths_fail_before_loading(tiny_checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(LLMUnavailable, match=str(missing)):
        ChatGLM2Chat.from_path(missing, dtype="fp32", device="cpu")
    with pytest.raises(LLMUnavailable, match=r"llm.chatglm2.path"):
        ChatGLM2Chat.from_settings(ChatGLM2Settings(device="cpu", dtype="fp32"), LLMSettings())
    with pytest.raises(LLMUnavailable, match=r"P-tuning checkpoint folder .*nowhere"):
        ChatGLM2Chat.from_path(tiny_checkpoint, "fp32", "cpu", ptuning_checkpoint=missing)
    (tiny_checkpoint / "tokenizer.model").unlink()
    with pytest.raises(LLMUnavailable, match=r"no tokenizer.model"):
        ChatGLM2Chat.from_path(tiny_checkpoint, dtype="fp32", device="cpu")
    (tiny_checkpoint / "config.json").unlink()
    with pytest.raises(LLMUnavailable, match=r"no config.json or tokenizer.model"):
        ChatGLM2Chat.from_path(tiny_checkpoint, dtype="fp32", device="cpu")


def test_broken_weights_give_a_one_line_error(tiny_checkpoint: Path) -> None:
    (tiny_checkpoint / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(LLMUnavailable, match="cannot load ChatGLM2") as err:
        ChatGLM2Chat.from_path(tiny_checkpoint, dtype="fp32", device="cpu")
    assert "\n" not in str(err.value)


def test_from_settings_loads_and_answers(tiny_checkpoint: Path, tiny_parts: Parts) -> None:
    settings = ChatGLM2Settings(path=str(tiny_checkpoint), dtype="fp32", device="cpu")
    llm = LLMSettings(max_new_tokens=6, temperature=0.0, top_p=0.7, context_tokens=512)
    chat = ChatGLM2Chat.from_settings(settings, llm)
    assert (chat.max_new_tokens, chat.top_p, chat.context_tokens) == (6, 0.7, 512)
    assert chat.model_name == "chatglm2-tiny"
    reference = ChatGLM2Chat(chatglm=tiny_parts[0], tokenizer=tiny_parts[1], max_tokens=6)
    assert chat.invoke("Hello").content == reference.invoke("Hello").content


def test_int8_on_cpu_loads(tiny_checkpoint: Path) -> None:
    chat = ChatGLM2Chat.from_path(tiny_checkpoint, dtype="int8", device="cpu", max_tokens=4)
    assert chat.chatglm.config.quantization_bit == 8
    assert chat.invoke("Hello").usage_metadata is not None


def test_importing_kbqa_llm_is_light() -> None:
    code = (
        "import sys, kbqa.llm; "
        "heavy = [m for m in ('torch', 'langchain_core', 'sentencepiece') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
