"""A client that disconnects, mid-stream or while it waits for a whole answer, cancels its
generation; the request timeout holds.

The model here is EchoChat with a delay per word: a generation that ran to the end would take
tens of seconds, so a stop within a fraction of that is the cancellation's doing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from server_helpers import EchoChat, LiveServer, serve_with_model, sse_events

QUESTION = "How much does the Zephyr-9 widget weigh?"
WORDS_PER_ANSWER = 10 * 100  # "Question: How much …" is 10 words, repeated 100 times


@pytest.fixture(scope="module")
def slow_model() -> EchoChat:
    return EchoChat(delay=0.03, repeat=100)


@pytest.fixture(scope="module")
def slow(docs_home: Path, slow_model: EchoChat) -> Iterator[LiveServer]:
    server = serve_with_model(docs_home, slow_model, queue_size=2, request_timeout_s=60)
    yield server
    server.stop()


def wait_until_idle(server: LiveServer, within: float = 15.0) -> float:
    """Unbounded, the slow model would generate for ~24 s: idle well before that is the
    cancellation's doing (the margin is for a loaded 2-core CI box)."""
    started = time.monotonic()
    with server.client() as client:
        while time.monotonic() - started < within:
            queue = client.get("/healthz").json()["queue"]
            if queue["running"] == 0 and queue["waiting"] == 0:
                return time.monotonic() - started
            time.sleep(0.02)
    raise AssertionError("the generation was not cancelled")


def test_disconnect_mid_stream_cancels_the_generation(
    slow: LiveServer, slow_model: EchoChat
) -> None:
    before = slow_model.produced[0]
    with slow.client() as client:
        payload = {"question": QUESTION, "stream": True}
        with client.stream("POST", "/v1/ask", json=payload) as response:
            events = sse_events(response)
            assert next(events)["type"] == "sources"
            assert [next(events)["type"] for _ in range(3)] == ["token"] * 3
        # Leaving the block closes the connection with the answer unfinished.
    wait_until_idle(slow)
    stopped_at = slow_model.produced[0]
    time.sleep(0.2)
    assert slow_model.produced[0] == stopped_at
    assert stopped_at - before < 50 < WORDS_PER_ANSWER


def test_openai_stream_closed_early_cancels_the_generation(
    slow: LiveServer, slow_model: EchoChat
) -> None:
    before = slow_model.produced[0]
    client = openai.OpenAI(base_url=f"{slow.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="echo-test",
        messages=[{"role": "user", "content": "count to a thousand"}],
        stream=True,
    )
    for _, chunk in zip(range(4), stream, strict=False):
        assert chunk.object == "chat.completion.chunk"
    stream.close()
    wait_until_idle(slow)
    assert slow_model.produced[0] - before < 50


def wait_for(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def queue_of(server: LiveServer) -> dict[str, int]:
    queue: dict[str, int] = httpx.get(f"{server.url}/healthz").json()["queue"]
    return queue


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
    slow: LiveServer, slow_model: EchoChat, route: str
) -> None:
    path, payload = WHOLE_REQUESTS[route]
    before = slow_model.produced[0]
    with send_request(slow, path, payload):
        wait_for(lambda: slow_model.produced[0] >= before + 3, "the model is generating")
    # The socket is closed: nobody will read this answer.
    wait_until_idle(slow)
    stopped_at = slow_model.produced[0]
    time.sleep(0.2)
    assert slow_model.produced[0] == stopped_at
    assert stopped_at - before < 50 < WORDS_PER_ANSWER
    with slow.client() as client:  # the slot is free again
        refusal = client.post("/v1/ask", json={"question": "What is the capital of Peru?"})
    assert refusal.status_code == 200 and refusal.json()["refused"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_while_waiting_in_line_leaves_the_queue(
    slow: LiveServer, slow_model: EchoChat, stream: bool
) -> None:
    before = slow_model.produced[0]
    with (
        slow.client() as client,
        client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as r,
    ):
        events = sse_events(r)  # kept: this stream holds the one generation slot
        next(events)
        with send_request(slow, "/v1/ask", {"question": QUESTION, "stream": stream}):
            wait_for(lambda: queue_of(slow)["waiting"] == 1, "the second request waits")
        wait_for(lambda: queue_of(slow)["waiting"] == 0, "the second request left the queue")
        # It left at once, not when the stream's answer was over and the slot came free.
        assert slow_model.produced[0] - before < 50
        assert queue_of(slow)["running"] == 1
    wait_until_idle(slow)


def test_the_next_request_gets_the_model_after_a_cancel(slow: LiveServer) -> None:
    with slow.client() as client:
        with client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as r:
            next(sse_events(r))
        wait_until_idle(slow)
        refusal = client.post("/v1/ask", json={"question": "What is the capital of Peru?"})
    assert refusal.status_code == 200 and refusal.json()["refused"] is True


@pytest.fixture(scope="module")
def impatient(docs_home: Path) -> Iterator[LiveServer]:
    model = EchoChat(delay=0.03, repeat=1000)  # 30 s unbounded
    server = serve_with_model(docs_home, model, queue_size=2, request_timeout_s=0.5)
    yield server
    server.stop()


def test_request_timeout_is_503_with_retry_after(impatient: LiveServer) -> None:
    with impatient.client() as client:
        started = time.monotonic()
        response = client.post("/v1/ask", json={"question": QUESTION})
    assert time.monotonic() - started < 15
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "timeout"
    assert int(response.headers["retry-after"]) >= 1
    wait_until_idle(impatient)


def test_request_timeout_mid_stream_ends_with_an_error_event(impatient: LiveServer) -> None:
    with (
        impatient.client() as client,
        client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as response,
    ):
        assert response.status_code == 200
        events = list(sse_events(response))
    assert events[0]["type"] == "sources"
    assert events[-1]["type"] == "error" and "timeout" in events[-1]["message"]
    wait_until_idle(impatient)


def test_healthz_answers_while_generating(slow: LiveServer) -> None:
    with slow.client() as client:
        with client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as r:
            events = sse_events(r)  # kept: dropping it would close the connection (a cancel)
            next(events)
            health = httpx.get(f"{slow.url}/healthz").json()
            # Answered while the generation still runs, not after it.
            assert health["queue"]["running"] == 1, health
        wait_until_idle(slow)
