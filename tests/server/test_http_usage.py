"""`usage` of `/v1/chat/completions` through the official `openai` client: whole completions,
streams with `stream_options.include_usage`, counted by the serving model itself.

The bundled SmolLM2 reports the token ids of the prompt it built and the tokens it generated;
a scripted model (FakeChat with report_usage, words as tokens) shows that the server passes the
backend's numbers on exactly and adds up a request's model calls; a model that reports
nothing gets `usage: null`, never a guess.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from langchain_core.messages import HumanMessage
from openai.types import CompletionUsage
from server_helpers import QUICK_LLM, LiveServer, serve_with_model, start_server

from kbqa.llm.default import DefaultChat
from kbqa.server.app import create_app
from kbqa.settings import load_settings
from tests.fake_chat import FakeChat

ZEPHYR = "How much does the Zephyr-9 widget weigh?"
SMOL = "SmolLM2-135M-Instruct"


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _usage(prompt: int, completion: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


# -- the bundled model -----------------------------------------------------------------------


def _smol(live: LiveServer) -> DefaultChat:
    model = live.app.state.kbqa.chat_model
    assert isinstance(model, DefaultChat)
    return model


def test_plain_chat_counts_the_prompt_with_the_models_chat_template(live: LiveServer) -> None:
    completion = _client(live).chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
    )
    usage = completion.usage
    assert usage is not None
    prompt = _smol(live).get_num_tokens_from_messages([HumanMessage("Say hello.")])
    assert usage.prompt_tokens == prompt
    assert 1 <= usage.completion_tokens <= 4
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_kb_answer_counts_the_prompt_the_chain_built(live: LiveServer) -> None:
    completion = _client(live).chat.completions.create(
        model="kbqa", messages=[{"role": "user", "content": ZEPHYR}], max_tokens=8
    )
    usage = completion.usage
    assert usage is not None and 1 <= usage.completion_tokens <= 8
    # The prompt the model read holds the question and every passage given to it.
    sources = (completion.model_extra or {})["sources"]
    model = _smol(live)
    least = model.get_num_tokens(ZEPHYR) + sum(model.get_num_tokens(s["text"]) for s in sources)
    assert sources and usage.prompt_tokens > least
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_with_include_usage_ends_with_the_usage_chunk(live: LiveServer) -> None:
    client = _client(live)
    whole = client.chat.completions.create(
        model="kbqa", messages=[{"role": "user", "content": ZEPHYR}], max_tokens=8
    )
    stream = client.chat.completions.create(
        model="kbqa",
        messages=[{"role": "user", "content": ZEPHYR}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None and c.choices for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1
    # Greedy decoding: the same prompt and answer as the whole completion, so the same usage.
    # The stream ends with the whole completion's content (auto mode may first stream the
    # model's text, then the note and the quote that replace it).
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text.strip().endswith(whole.choices[0].message.content)
    assert last.usage == whole.usage


def test_stream_without_include_usage_has_no_usage(live: LiveServer) -> None:
    payload = {"model": "kbqa", "messages": [{"role": "user", "content": ZEPHYR}], "stream": True}
    with live.client() as client, client.stream("POST", "/v1/chat/completions", json=payload) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert chunks and all("usage" not in c and c["choices"] for c in chunks)


def test_refusal_used_no_tokens(live: LiveServer) -> None:
    completion = _client(live).chat.completions.create(
        model="kbqa", messages=[{"role": "user", "content": "What is the capital of Peru?"}]
    )
    assert (completion.model_extra or {})["sources"] == []
    assert completion.usage == _usage(0, 0)


# -- scripted models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counting_model() -> FakeChat:
    return FakeChat(report_usage=True)


@pytest.fixture(scope="module")
def counting(docs_home: Path, counting_model: FakeChat) -> Iterator[LiveServer]:
    # The echoed rewrite of a follow-up finds nothing: the model then answers without the KB
    # (on_no_context = chat) rather than the chain refusing, so a follow-up is two calls.
    settings = load_settings(
        docs_home,
        overrides={
            "llm": QUICK_LLM,
            "server": {"api_key": ""},
            "chain": {"on_no_context": "chat"},
        },
    )
    server = start_server(create_app(settings, chat_model=counting_model), settings)
    yield server
    server.stop()


def test_the_backends_own_counts_are_passed_on(
    counting: LiveServer, counting_model: FakeChat
) -> None:
    client = _client(counting)
    completion = client.chat.completions.create(
        model="echo-test", messages=[{"role": "user", "content": "one two three"}]
    )
    assert counting_model.usages[-1] == (3, 3)
    assert completion.usage == _usage(3, 3)
    stream = client.chat.completions.create(
        model="echo-test",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert list(stream)[-1].usage == _usage(3, 3)


def test_usage_adds_up_the_model_calls_of_a_request(
    counting: LiveServer, counting_model: FakeChat
) -> None:
    # A follow-up: the chain has this model rewrite the question first, then answer.
    calls = len(counting_model.usages)
    completion = _client(counting).chat.completions.create(
        model="kbqa",
        messages=[
            {"role": "user", "content": ZEPHYR},
            {"role": "assistant", "content": "It weighs 412 grams."},
            {"role": "user", "content": "And how long does its battery last?"},
        ],
    )
    made = counting_model.usages[calls:]
    assert len(made) == 2
    assert completion.usage == _usage(sum(u[0] for u in made), sum(u[1] for u in made))


@pytest.fixture(scope="module")
def silent(docs_home: Path) -> Iterator[LiveServer]:
    server = serve_with_model(docs_home, FakeChat())  # reports no usage
    yield server
    server.stop()


def test_a_backend_that_does_not_count_gets_null_usage(silent: LiveServer) -> None:
    client = _client(silent)
    completion = client.chat.completions.create(
        model="kbqa", messages=[{"role": "user", "content": ZEPHYR}]
    )
    assert completion.choices[0].message.content and completion.usage is None
    stream = client.chat.completions.create(
        model="kbqa",
        messages=[{"role": "user", "content": ZEPHYR}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is None
    assert chunks[-2].choices[0].finish_reason == "stop"
