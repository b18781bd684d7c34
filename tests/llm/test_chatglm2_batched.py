"""BatchedChatGLM2Chat: the LangChain contract, and concurrent calls batched with the answers
each would get alone (greedy, tiny random model, tokenizer trained at test time)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from kbqa.chatglm import ChatGLM2, ChatGLM2Tokenizer, PromptTooLong
from kbqa.chatglm.batching import BatchEngine
from kbqa.llm.chatglm2 import ChatGLM2Chat
from kbqa.llm.chatglm2_batched import BatchedChatGLM2Chat
from kbqa.llm.factory import build_chat_model, context_window, generation_concurrency
from kbqa.settings import ChatGLM2Settings, LLMSettings, load_settings
from tests.waiting import wait_for

Parts = tuple[ChatGLM2, ChatGLM2Tokenizer]
QUESTIONS = ["Hello", "你好", "What is a knowledge base?", "Hey", "请回答", "Round two"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Params:
    parts: Parts

    @pytest.fixture(autouse=True)
    def _use_tiny(self, tiny_parts: Parts) -> None:
        self.parts = tiny_parts

    @property
    def chat_model_class(self) -> type[BatchedChatGLM2Chat]:
        return BatchedChatGLM2Chat

    @property
    def chat_model_params(self) -> dict[str, Any]:
        model, tokenizer = self.parts
        return {"chatglm": model, "tokenizer": tokenizer, "max_batch": 4}

    @property
    def supports_model_override(self) -> bool:
        return False


class TestBatchedChatStandardUnit(_Params, ChatModelUnitTests):
    pass


class TestBatchedChatStandardIntegration(_Params, ChatModelIntegrationTests):
    pass


@pytest.fixture
def plain(tiny_parts: Parts) -> ChatGLM2Chat:
    return ChatGLM2Chat(chatglm=tiny_parts[0], tokenizer=tiny_parts[1], max_tokens=24)


def test_concurrent_calls_share_steps_and_answer_as_alone(
    tiny_parts: Parts, plain: ChatGLM2Chat
) -> None:
    alone = [plain.invoke(q).content for q in QUESTIONS]
    engine = BatchEngine(tiny_parts[0], max_batch=4, max_seq=256)  # started below, once all wait
    chat = BatchedChatGLM2Chat(
        chatglm=tiny_parts[0], tokenizer=tiny_parts[1], max_tokens=24, engine=engine
    )
    answers: dict[int, Any] = {}

    def ask(i: int) -> None:
        answers[i] = chat.invoke(QUESTIONS[i]).content

    users = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
    for user in users:
        user.start()
    wait_for(lambda: engine.waiting == len(QUESTIONS), "every question waits for the engine")
    with engine:
        for user in users:
            user.join(timeout=60)
    assert [answers[i] for i in range(len(QUESTIONS))] == alone
    assert engine.stats.max_running == 4  # four decoded together, two waited for a row


async def test_async_calls_batch_too(tiny_parts: Parts, plain: ChatGLM2Chat) -> None:
    chat = BatchedChatGLM2Chat(chatglm=tiny_parts[0], tokenizer=tiny_parts[1], max_tokens=24)
    alone = [plain.invoke(q).content for q in QUESTIONS[:4]]
    results = await asyncio.gather(*(chat.ainvoke(q) for q in QUESTIONS[:4]))
    assert [r.content for r in results] == alone
    streamed = [str(c.content) async for c in chat.astream(QUESTIONS[0])]
    assert "".join(streamed) == alone[0]
    chat.close()


def test_stop_strings_usage_and_early_stop(tiny_parts: Parts, plain: ChatGLM2Chat) -> None:
    chat = BatchedChatGLM2Chat(chatglm=tiny_parts[0], tokenizer=tiny_parts[1], max_tokens=24)
    full = str(plain.invoke("Hello").content)
    stop = full[len(full) // 2 :][:2]
    cut = chat.invoke("Hello", stop=[stop])
    assert cut.content == full[: full.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    result = chat.invoke("Hello", max_tokens=5)
    assert result.usage_metadata is not None and result.usage_metadata["output_tokens"] == 5
    assert result.response_metadata["finish_reason"] == "length"
    for chunk in chat.stream("Hello", max_tokens=200):
        if chunk.content:
            break  # the consumer leaves: its request leaves the batch
    engine = chat.engine
    assert engine is not None
    wait_for(lambda: engine.running == 0 and engine.waiting == 0, "the left request is gone")
    chat.close()


def test_the_prompt_must_fit_a_cache_row(tiny_parts: Parts) -> None:
    chat = BatchedChatGLM2Chat(
        chatglm=tiny_parts[0], tokenizer=tiny_parts[1], max_tokens=8, context_tokens=40, max_batch=2
    )
    assert chat.context_window == 48 == context_window(chat)
    with pytest.raises(PromptTooLong):
        chat.invoke("a question far too long for such a small context " * 5)
    chat.close()


def test_settings_choose_the_batched_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    chatglm2 = {"path": str(tiny_checkpoint), "dtype": "fp32", "device": "cpu", "max_batch": 3}
    llm = {"backend": "chatglm2", "max_new_tokens": 6, "context_tokens": 300, "chatglm2": chatglm2}
    settings = load_settings(home=tmp_path, overrides={"llm": llm})
    chat = build_chat_model(settings)
    assert isinstance(chat, BatchedChatGLM2Chat) and chat.engine is not None
    assert (chat.engine.max_batch, chat.engine.max_seq) == (3, 306)
    assert generation_concurrency(settings) == 3
    reference = ChatGLM2Chat.from_settings(
        ChatGLM2Settings(**chatglm2), LLMSettings(max_new_tokens=6, context_tokens=300)
    )
    assert chat.invoke("Hello").content == reference.invoke("Hello").content
    chat.close()

    llm["chatglm2"] = {**chatglm2, "batching": False}
    settings = load_settings(home=tmp_path, overrides={"llm": llm})
    assert type(build_chat_model(settings)) is ChatGLM2Chat
    assert generation_concurrency(settings) == 1
