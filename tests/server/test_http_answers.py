"""Answers over real HTTP from the bundled SmolLM2: our /v1/ask (JSON and SSE), the official
`openai` client, LangChain's ChatOpenAI, and LangChain's community ChatGLM against `POST /`."""

from __future__ import annotations

import re

import openai
import pytest
from langchain_community.llms import ChatGLM
from langchain_openai import ChatOpenAI
from server_helpers import LiveServer, sse_events

ZEPHYR = "How much does the Zephyr-9 widget weigh?"
BAKERY = "When does the Harbor Street bakery open?"


def test_ask_returns_the_json_of_kbqa_ask(live: LiveServer) -> None:
    with live.client() as client:
        response = client.post("/v1/ask", json={"question": ZEPHYR})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        *("answer", "refused", "sources", "timings"),
        *("evidence_basis", "answer_mode", "generated"),
    }
    assert body["answer"].strip() and body["refused"] is False
    assert body["sources"][0]["source"] == "zephyr.md"
    assert [s["index"] for s in body["sources"]] == list(range(1, len(body["sources"]) + 1))
    assert set(body["sources"][0]) >= {"chunk_id", "doc_id", "page", "heading", "text", "score"}
    assert set(body["timings"]) == {"retrieval_ms", "first_token_ms", "total_ms", "tokens_per_s"}


def test_ask_streams_sources_tokens_done(live: LiveServer) -> None:
    with (
        live.client() as client,
        client.stream("POST", "/v1/ask", json={"question": BAKERY, "stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    assert events[0]["type"] == "sources"
    assert events[0]["sources"][0]["source"] == "harbor.txt"
    tokens = [e["text"] for e in events if e["type"] == "token"]
    assert tokens and [e["type"] for e in events[1:-1]] == ["token"] * len(tokens)
    assert events[-1]["type"] == "done"
    done = events[-1]  # the answer shown: the streamed one, or a quote that replaced it
    streamed = done["answer"] if done["generated"] is None else done["generated"]
    assert streamed == "".join(tokens).strip()
    assert events[-1]["refused"] is False and "total_ms" in events[-1]["timings"]


def test_unrelated_question_is_refused_without_sources(live: LiveServer) -> None:
    with live.client() as client:
        body = client.post("/v1/ask", json={"question": "What is the capital of Peru?"}).json()
    assert body["refused"] is True and body["sources"] == []


def test_ask_with_history_and_a_kb_list(live: LiveServer) -> None:
    payload = {
        "question": "And how long does its battery last?",
        "kb": ["default"],
        "history": [[ZEPHYR, "It weighs 412 grams."]],
        "top_k": 2,
    }
    with live.client() as client:
        body = client.post("/v1/ask", json=payload).json()
    assert body["refused"] is False
    assert len(body["sources"]) <= 2
    assert "31 hours" in " ".join(s["text"] for s in body["sources"])


def test_openai_client_lists_models(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    ids = [model.id for model in client.models.list()]
    assert ids[:2] == ["kbqa", "kbqa/default"]
    assert "SmolLM2-135M-Instruct" in ids


def test_openai_client_kb_answer_with_sources(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="kbqa", messages=[{"role": "user", "content": ZEPHYR}], max_tokens=8
    )
    assert completion.object == "chat.completion" and completion.model == "kbqa"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    sources = (completion.model_extra or {})["sources"]
    assert sources[0]["source"] == "zephyr.md"


def test_openai_client_streams_a_kb_answer(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="kbqa/default",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": BAKERY},
        ],
        stream=True,
    )
    chunks = list(stream)
    assert (chunks[0].model_extra or {})["sources"][0]["source"] == "harbor.txt"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_openai_client_plain_chat_with_the_backend_model(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=4,
    )
    assert completion.choices[0].message.content
    assert (completion.model_extra or {}).get("sources") is None


def test_openai_client_unknown_model_is_404(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    for model in ("gpt-4o", "kbqa/nosuchkb"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_langchain_chat_openai_invoke_and_stream(live: LiveServer) -> None:
    chat = ChatOpenAI(base_url=f"{live.url}/v1", api_key="unused", model="kbqa", max_retries=0)  # type: ignore[arg-type]
    assert chat.invoke(ZEPHYR).content
    pieces = [chunk.content for chunk in chat.stream(BAKERY)]
    assert "".join(str(p) for p in pieces).strip()


def test_langchain_chatglm_against_post_root(live: LiveServer) -> None:
    llm = ChatGLM(endpoint_url=f"{live.url}/", with_history=True)
    answer = llm.invoke(ZEPHYR)
    assert answer.strip()
    assert llm.history == [[ZEPHYR, answer]]


def test_chatglm_api_contract(live: LiveServer) -> None:
    payload = {
        "prompt": "它有多长？",
        "history": [["青石桥建于哪一年？", "一八九零年。"]],
        "max_length": 8192,
        "top_p": 0.8,
        "temperature": 0.95,
    }
    with live.client() as client:
        response = client.post("/", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"response", "history", "status", "time"}
    assert body["status"] == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["time"])
    assert body["history"] == [*payload["history"], ["它有多长？", body["response"]]]
