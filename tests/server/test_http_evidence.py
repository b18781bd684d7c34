"""Evidence and answer.mode over real HTTP: /v1/ask (JSON and SSE) and the OpenAI-compatible
route, on a real server over the `default` KB, with scripted answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_helpers import LiveServer, serve_with_model, sse_events

from tests.fake_chat import FakeChat

ZEPHYR = "How much does the Zephyr-9 widget weigh?"
SUPPORTED = "The Zephyr-9 widget weighs 412 grams [1]."
INVENTED = "It weighs 412 grams, see https://zephyr.example.com/specs.pdf [1]."


@pytest.fixture(scope="module")
def scripted(docs_home: Path) -> Iterator[LiveServer]:
    """The server with a model whose answer is the question's scripted reply."""
    replies = {ZEPHYR: SUPPORTED, "Zephyr-9 weight, in grams?": INVENTED}

    def reply(messages: list[Any]) -> str:
        return next((r for q, r in replies.items() if q in messages[-1].text), "Ask again.")

    server = serve_with_model(docs_home, FakeChat(reply=reply))
    yield server
    server.stop()


def check_evidence(sources: list[dict[str, Any]], basis: str) -> str:
    """The top evidence sentence; every span slices its source's text exactly."""
    spans = []
    for source in sources:
        for e in source["evidence"]:
            assert source["text"][e["start"] : e["end"]] == e["text"]
            assert e["basis"] == basis
            spans.append(e)
    assert spans
    return str(max(spans, key=lambda e: e["score"])["text"])


def test_ask_json_carries_evidence_and_the_answer_mode(scripted: LiveServer) -> None:
    with scripted.client() as client:
        body = client.post("/v1/ask", json={"question": ZEPHYR}).json()
    assert body["answer"] == SUPPORTED and body["answer_mode"] == "generated"
    assert body["generated"] is None and body["evidence_basis"] == "answer"
    assert "412 grams" in check_evidence(body["sources"], "answer")


def test_sse_done_repeats_the_sources_with_evidence_and_the_final_answer(
    scripted: LiveServer,
) -> None:
    payload = {"question": "Zephyr-9 weight, in grams?", "stream": True}
    with scripted.client() as client, client.stream("POST", "/v1/ask", json=payload) as response:
        events = list(sse_events(response))
    first, done = events[0], events[-1]
    assert first["type"] == "sources" and all("evidence" not in s for s in first["sources"])
    tokens = "".join(e["text"] for e in events if e["type"] == "token")
    assert tokens == INVENTED  # streamed as generated ...
    assert done["type"] == "done" and done["answer_mode"] == "extracted"
    assert done["generated"] == INVENTED  # ... then replaced: the URL is in no source
    assert done["answer"].startswith("Quoted from the documents:") and "http" not in done["answer"]
    assert "412 grams" in check_evidence(done["sources"], "question")


def test_openai_sources_carry_evidence_whole_and_streamed(scripted: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{scripted.url}/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": ZEPHYR}]
    completion = client.chat.completions.create(model="kbqa", messages=messages)
    assert completion.choices[0].message.content == SUPPORTED
    assert "412 grams" in check_evidence((completion.model_extra or {})["sources"], "answer")
    chunks = list(client.chat.completions.create(model="kbqa", messages=messages, stream=True))
    last = chunks[-1].model_extra or {}
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "412 grams" in check_evidence(last["sources"], "answer")


def test_openai_stream_adds_the_quote_that_replaces_an_unsupported_answer(
    scripted: LiveServer,
) -> None:
    payload = {
        "model": "kbqa",
        "messages": [{"role": "user", "content": "Zephyr-9 weight, in grams?"}],
        "stream": True,
    }
    with httpx.Client(base_url=scripted.url, timeout=120) as client:
        text = "".join(
            chunk["choices"][0]["delta"].get("content", "")
            for chunk in sse_events(client.post("/v1/chat/completions", json=payload))
            if chunk.get("choices")
        )
    generated, _, quoted = text.partition("──\n")
    assert generated.startswith(INVENTED)
    assert quoted.startswith("Quoted from the documents:") and "412 grams" in quoted
