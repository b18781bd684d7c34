"""A client that disconnects, mid-stream or while it waits for a whole answer, cancels its
generation; the request timeout holds.

The model is FakeChat with a 1,000-word answer held after HELD_AFTER words until the test
releases it. So a generation is mid-answer for as long as the test needs, and a cancel is seen
without a clock: the server marks the generation as stopping while it is held, the test
releases it, and the model's stream is closed at the very next word instead of running on to
the answer's end.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from langchain_core.messages import BaseMessage
from server_helpers import LiveServer, serve_with_model, sse_events

from kbqa.server.generation import GenerationGate
from kbqa.server.state import ServerState
from tests.fake_chat import FakeChat, echo_last_line
from tests.waiting import wait_for

QUESTION = "How much does the Zephyr-9 widget weigh?"
HELD_AFTER = 5
REPEAT = 100


def long_answer(messages: list[BaseMessage]) -> str:
    """The question's last line 100 times over: far more words than any test lets through."""
    return " ".join([echo_last_line(messages)] * REPEAT)


def held_model() -> FakeChat:
    return FakeChat(reply=long_answer, hold_after=HELD_AFTER)


@pytest.fixture(scope="module")
def slow_model() -> FakeChat:
    return held_model()


@pytest.fixture(scope="module")
def slow(docs_home: Path, slow_model: FakeChat) -> Iterator[LiveServer]:
    server = serve_with_model(docs_home, slow_model, queue_size=2, request_timeout_s=60)
    yield server
    slow_model.release()
    server.stop()


def gate_of(server: LiveServer) -> GenerationGate:
    state: ServerState = server.app.state.kbqa
    return state.gate


def queue_of(server: LiveServer) -> dict[str, int]:
    queue: dict[str, int] = httpx.get(f"{server.url}/healthz").json()["queue"]
    return queue


def wait_until_idle(server: LiveServer) -> None:
    gate = gate_of(server)
    wait_for(lambda: gate.running == 0 and gate.waiting == 0, "the server is idle")


def assert_cancelled_while_held(server: LiveServer, model: FakeChat) -> None:
    """The one generation, held mid-answer (or, on a slow box, stopped before it got there),
    was told to stop: released, it must end at its next word, not run on to its answer's end.
    """
    finished = model.finished
    gate = gate_of(server)
    wait_for(lambda: gate.stopping == 1 or gate.running == 0, "the server cancels the generation")
    produced = model.produced
    model.release()
    wait_until_idle(server)
    assert model.finished == finished, "the cancelled generation ran to the end of its answer"
    assert model.produced <= produced + 1
    model.wait_until(lambda m: m.held == 0, "no generation is held")
    model.hold()


@pytest.fixture(autouse=True)
def held_again(slow: LiveServer, slow_model: FakeChat) -> Iterator[None]:
    """Whatever a test leaves held is let go and ends, and the next test finds the model holding
    (holding again while a released answer still runs would catch it at its next word)."""
    yield
    slow_model.release()
    wait_until_idle(slow)
    slow_model.wait_until(lambda m: m.held == 0, "no generation is held")
    slow_model.hold()


def test_disconnect_mid_stream_cancels_the_generation(
    slow: LiveServer, slow_model: FakeChat
) -> None:
    with slow.client() as client:
        payload = {"question": QUESTION, "stream": True}
        with client.stream("POST", "/v1/ask", json=payload) as response:
            events = sse_events(response)
            assert next(events)["type"] == "sources"
            assert [next(events)["type"] for _ in range(3)] == ["token"] * 3
        # Leaving the block closes the connection with the answer unfinished.
    assert_cancelled_while_held(slow, slow_model)


def test_openai_stream_closed_early_cancels_the_generation(
    slow: LiveServer, slow_model: FakeChat
) -> None:
    client = openai.OpenAI(base_url=f"{slow.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="echo-test",
        messages=[{"role": "user", "content": "count to a thousand"}],
        stream=True,
    )
    for _, chunk in zip(range(4), stream, strict=False):
        assert chunk.object == "chat.completion.chunk"
    stream.close()
    assert_cancelled_while_held(slow, slow_model)


def send_request(server: LiveServer, path: str, payload: dict[str, Any]) -> socket.socket:
    """A raw connection carrying a POST; the caller hangs up by closing it."""
    address = urlsplit(server.url)
    assert address.hostname and address.port
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection((address.hostname, address.port))
    sock.sendall(head.encode() + body)
    return sock


WHOLE_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ask": ("/v1/ask", {"question": QUESTION}),
    "chatglm": ("/", {"prompt": QUESTION, "history": []}),
    "openai-kb": (
        "/v1/chat/completions",
        {"model": "kbqa", "messages": [{"role": "user", "content": QUESTION}]},
    ),
    "openai-chat": (
        "/v1/chat/completions",
        {"model": "echo-test", "messages": [{"role": "user", "content": QUESTION}]},
    ),
}


@pytest.mark.parametrize("route", WHOLE_REQUESTS)
def test_disconnect_during_a_whole_answer_stops_the_generation(
    slow: LiveServer, slow_model: FakeChat, route: str
) -> None:
    path, payload = WHOLE_REQUESTS[route]
    with send_request(slow, path, payload):
        slow_model.wait_until(lambda m: m.held == 1, "the model is mid-answer")
    # The socket is closed: nobody will read this answer.
    assert_cancelled_while_held(slow, slow_model)
    with slow.client() as client:  # the slot is free again
        refusal = client.post("/v1/ask", json={"question": "What is the capital of Peru?"})
    assert refusal.status_code == 200 and refusal.json()["refused"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_while_waiting_in_line_leaves_the_queue(
    slow: LiveServer, slow_model: FakeChat, stream: bool
) -> None:
    with (
        slow.client() as client,
        client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as r,
    ):
        events = sse_events(r)  # kept: this stream holds the one generation slot
        next(events)
        with send_request(slow, "/v1/ask", {"question": QUESTION, "stream": stream}):
            wait_for(lambda: queue_of(slow)["waiting"] == 1, "the second request waits")
        wait_for(lambda: queue_of(slow)["waiting"] == 0, "the second request left the queue")
        # It left on its own: the slot's generation is still held mid-answer.
        assert queue_of(slow)["running"] == 1 and slow_model.held == 1
    assert_cancelled_while_held(slow, slow_model)


def test_the_next_request_gets_the_model_after_a_cancel(
    slow: LiveServer, slow_model: FakeChat
) -> None:
    with slow.client() as client:
        with client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as r:
            next(sse_events(r))
        assert_cancelled_while_held(slow, slow_model)
        slow_model.release()
        answered = client.post("/v1/chat/completions", json=WHOLE_REQUESTS["openai-chat"][1])
    assert answered.status_code == 200
    assert answered.json()["choices"][0]["message"]["content"] == " ".join([QUESTION] * REPEAT)


@pytest.fixture(scope="module")
def impatient_model() -> FakeChat:
    return held_model()


@pytest.fixture(scope="module")
def impatient(docs_home: Path, impatient_model: FakeChat) -> Iterator[LiveServer]:
    # Held, the model never finishes on its own: every request here runs into the timeout.
    server = serve_with_model(docs_home, impatient_model, queue_size=2, request_timeout_s=0.5)
    yield server
    impatient_model.release()
    server.stop()


def test_request_timeout_is_503_with_retry_after(
    impatient: LiveServer, impatient_model: FakeChat
) -> None:
    with impatient.client() as client:
        response = client.post("/v1/ask", json={"question": QUESTION})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "timeout"
    assert int(response.headers["retry-after"]) >= 1
    assert_cancelled_while_held(impatient, impatient_model)


def test_request_timeout_mid_stream_ends_with_an_error_event(
    impatient: LiveServer, impatient_model: FakeChat
) -> None:
    with (
        impatient.client() as client,
        client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as response,
    ):
        assert response.status_code == 200
        events = list(sse_events(response))
    assert events[0]["type"] == "sources"
    assert events[-1]["type"] == "error" and "timeout" in events[-1]["message"]
    assert_cancelled_while_held(impatient, impatient_model)


def test_healthz_answers_while_generating(slow: LiveServer, slow_model: FakeChat) -> None:
    with slow.client() as client:
        with client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as r:
            events = sse_events(r)  # kept: dropping it would close the connection (a cancel)
            next(events)
            slow_model.wait_until(lambda m: m.held == 1, "the model is mid-answer")
            health = httpx.get(f"{slow.url}/healthz").json()
            # Answered while the generation is held mid-answer, so before it could end.
            assert health["queue"]["running"] == 1, health
        assert_cancelled_while_held(slow, slow_model)
