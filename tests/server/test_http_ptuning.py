"""Serving a P-tuned ChatGLM2 (`llm.chatglm2.ptuning_checkpoint`): the tuned model is listed by
GET /v1/models under its own name, `<base>-pt-<checkpoint folder>`, and a chat completion
asking for that name is answered by the base with the trained prefix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from server_helpers import LiveServer

from kbqa.llm.chatglm2 import ChatGLM2Chat
from tests.ptuning_support import SERVED_NAME, serve_ptuned


@pytest.fixture(scope="module")
def ptuned(tmp_path_factory: pytest.TempPathFactory, sp_model_path: Path) -> Iterator[LiveServer]:
    server = serve_ptuned(tmp_path_factory, sp_model_path)
    yield server
    server.stop()


def test_the_tuned_model_is_listed_and_answers_with_its_prefix(ptuned: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{ptuned.url}/v1", api_key="unused", max_retries=0)
    names = [model.id for model in client.models.list()]
    assert SERVED_NAME in names
    assert "chatglm2-tiny" not in names  # the base alone is not what answers here

    question = [{"role": "user", "content": "你好"}]
    completion = client.chat.completions.create(
        model=SERVED_NAME, messages=question, max_tokens=8, temperature=0
    )
    assert completion.model == SERVED_NAME
    answer = completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    chatglm2 = ptuned.settings.llm.chatglm2
    tuned = ChatGLM2Chat.from_path(
        chatglm2.path, "fp32", "cpu", ptuning_checkpoint=chatglm2.ptuning_checkpoint, max_tokens=8
    )
    base = ChatGLM2Chat.from_path(chatglm2.path, "fp32", "cpu", max_tokens=8)
    assert tuned.model_name == SERVED_NAME and base.model_name == "chatglm2-tiny"
    assert answer == tuned.invoke("你好").content
    assert answer != base.invoke("你好").content  # the prefix changes what the model says


def test_the_base_name_is_not_a_model_here(ptuned: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{ptuned.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="chatglm2-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert err.value.status_code == 404
    assert "model_not_found" in str(err.value.body)
