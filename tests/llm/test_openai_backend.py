"""The `openai` LLM backend against servers on loopback that the tests start themselves.

A second `kbqa serve` process (the real app, a small model injected) stands in for vLLM:
answers, streaming, async, auth and unknown models. A stub OpenAI-compatible server in a
thread plays the misbehaving remote: slow, stalling mid-stream, overloaded; and a closed port
plays the remote that is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from kbqa.llm.errors import LLMUnavailable
from kbqa.llm.factory import build_chat_model
from kbqa.settings import load_settings
from tests.server.server_helpers import serve_in_thread
from tests.waiting import HANG_GUARD_S, wait_for

pytest.importorskip("langchain_openai", reason="the openai extra is not installed")

from kbqa.llm.openai_chat import RemoteChat

SCRIPT = Path(__file__).with_name("remote_kbqa.py")
REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-remote-test"
REMOTE_MODEL = "echo-remote"  # remote_kbqa.MODEL_NAME: the backend's own name = plain chat


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _chat(tmp_path: Path, base_url: str, **openai: Any) -> RemoteChat:
    settings = load_settings(
        tmp_path / "home",
        overrides={
            "llm": {
                "backend": "openai",
                "max_new_tokens": 64,
                "temperature": 0.0,
                "openai": {"base_url": base_url, **openai},
            }
        },
    )
    model = build_chat_model(settings)
    assert isinstance(model, RemoteChat)
    return model


# -- the second kbqa serve -------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (`…/v1`) of a `kbqa serve` subprocess with an injected echo model."""
    home = tmp_path_factory.mktemp("remote-home")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("KBQA_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(home), str(port), API_KEY],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up_or_exited() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return process.poll() is not None

    try:
        wait_for(up_or_exited, "the remote kbqa server starts")
    except AssertionError:
        process.kill()
        raise
    if process.poll() is not None:
        _, stderr = process.communicate()
        pytest.fail(f"the remote kbqa server did not start: {stderr[-2000:]}")
    yield f"{url}/v1"
    process.terminate()
    process.wait(timeout=30)


def test_answers_from_remote_kbqa(tmp_path: Path, remote: str) -> None:
    chat = _chat(tmp_path, remote, model=REMOTE_MODEL, api_key=API_KEY)
    assert chat.invoke("how long does the battery last").content == (
        "echo: how long does the battery last"
    )


def test_streams_from_remote_kbqa(tmp_path: Path, remote: str) -> None:
    chat = _chat(tmp_path, remote, model=REMOTE_MODEL, api_key=API_KEY)
    pieces = [chunk.text for chunk in chat.stream("one two three four")]
    assert len([p for p in pieces if p]) == 5  # a chunk per word as the remote produced it
    assert "".join(pieces) == "echo: one two three four"


def test_usage_comes_from_the_remote(tmp_path: Path, remote: str) -> None:
    # The remote kbqa counts words as tokens: "one two three" read, "echo: one two three" made.
    chat = _chat(tmp_path, remote, model=REMOTE_MODEL, api_key=API_KEY)
    expected = {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    usage = chat.invoke("one two three").usage_metadata
    assert usage is not None and {k: usage[k] for k in expected} == expected  # type: ignore[literal-required]
    streamed = [chunk.usage_metadata for chunk in chat.stream("one two three")]
    reported = [u for u in streamed if u]
    assert len(reported) == 1 and {k: reported[0][k] for k in expected} == expected  # type: ignore[literal-required]


async def test_async_invoke_and_stream(tmp_path: Path, remote: str) -> None:
    chat = _chat(tmp_path, remote, model=REMOTE_MODEL, api_key=API_KEY)
    assert (await chat.ainvoke("你好 世界")).content == "echo: 你好 世界"
    pieces = [chunk.text async for chunk in chat.astream("a b")]
    assert "".join(pieces) == "echo: a b"


def test_settings_reach_the_remote(tmp_path: Path, remote: str) -> None:
    # max_new_tokens=2 becomes max_completion_tokens=2, which the remote applies.
    chat = _chat(tmp_path, remote, model=REMOTE_MODEL, api_key=API_KEY)
    short = chat.model_copy(update={"max_tokens": 2})
    assert short.invoke("one two three").content == "echo: one"


def test_wrong_key_and_unknown_model_are_one_line(tmp_path: Path, remote: str) -> None:
    wrong_key = _chat(tmp_path, remote, model=REMOTE_MODEL, api_key="sk-wrong")
    with pytest.raises(LLMUnavailable) as caught:
        wrong_key.invoke("hi")
    assert str(caught.value) == (
        f"the LLM server at {remote} answered HTTP 401: "
        "missing or wrong API key (send Authorization: Bearer <key>)"
    )
    unknown = _chat(tmp_path, remote, model="no-such-model", api_key=API_KEY)
    with pytest.raises(LLMUnavailable, match=r"answered HTTP 404: no model 'no-such-model'"):
        unknown.invoke("hi")


def test_kbqa_ask_through_the_remote(
    tmp_path: Path, remote: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kbqa.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zephyr.md").write_text(
        "# Zephyr-9\n\nThe Zephyr-9 battery lasts 31 hours on a single charge.\n", encoding="utf-8"
    )
    for key, value in {
        "BACKEND": "openai",
        "OPENAI__BASE_URL": remote,
        "OPENAI__MODEL": REMOTE_MODEL,
        "OPENAI__API_KEY": API_KEY,
        "OPENAI__MAX_RETRIES": "0",
    }.items():
        monkeypatch.setenv(f"KBQA_LLM__{key}", value)
    monkeypatch.setenv("KBQA_ANSWER__MODE", "generate")  # the remote's own text, not a quote
    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    assert runner.invoke(app, [*home, "ingest", str(docs), "--json"]).exit_code == 0
    question = "How long does the Zephyr-9 battery last?"
    asked = runner.invoke(app, [*home, "ask", question, "--json"])
    assert asked.exit_code == 0, asked.stderr
    answer = json.loads(asked.stdout)
    # The remote echoes the prompt it got: the retrieved passage and the question.
    assert not answer["refused"] and answer["answer"].startswith("echo:")
    assert "31 hours" in answer["answer"] and "battery last?" in answer["answer"]
    assert [s["source"] for s in answer["sources"]] == ["zephyr.md"]

    down = f"http://127.0.0.1:{_free_port()}/v1"
    monkeypatch.setenv("KBQA_LLM__OPENAI__BASE_URL", down)
    failed = runner.invoke(app, [*home, "ask", question])
    assert failed.exit_code == 2
    assert failed.stderr.startswith(f"error: cannot reach the LLM server at {down}: ")
    assert failed.stderr.count("\n") == 1


# -- a misbehaving remote ----------------------------------------------------------------------


@dataclass
class Behaviour:
    failures: int = 0
    """Answer 503 to this many requests first."""
    silent: bool = False
    """Answer nothing until the client hangs up (a remote slower than any timeout)."""
    overlap: int = 0
    """Answer only once this many requests are in at once: a client that sends them one after
    the other is never answered (until HANG_GUARD_S, then 500)."""
    stall_s: float = 0.0
    """Streaming: wait this long after the first chunk."""
    seen: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    """(JSON body, Authorization header) of every request."""
    in_flight: int = 0
    most_in_flight: int = 0
    """The most requests being answered at once (counted, not timed)."""


def _stub_app(current: list[Behaviour]) -> FastAPI:
    """An OpenAI-compatible server that behaves as `current[0]` says (a test swaps it)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Response:
        behaviour = current[0]
        body = await request.json()
        behaviour.seen.append((body, request.headers.get("authorization", "")))
        if len(behaviour.seen) <= behaviour.failures:
            error = {"error": {"message": "the queue is full", "type": "server_error"}}
            return JSONResponse(error, status_code=503)
        behaviour.in_flight += 1
        behaviour.most_in_flight = max(behaviour.most_in_flight, behaviour.in_flight)
        try:
            outcome = await _wait_for(
                request,
                lambda: not behaviour.silent and behaviour.most_in_flight >= behaviour.overlap,
            )
        finally:
            behaviour.in_flight -= 1
        if outcome == "gone":
            return Response(status_code=499)  # the client gave up: nobody reads this
        if outcome == "never":
            return JSONResponse({"error": {"message": "never", "type": "test"}}, status_code=500)
        if body.get("stream"):
            return StreamingResponse(_chunks(behaviour), media_type="text/event-stream")
        message = {"role": "assistant", "content": "stub answer"}
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    return app


async def _wait_for(request: Request, ready: Callable[[], bool]) -> str:
    """ "ready", or "gone" if the client hangs up first (so no handler outlives its test), or
    "never" after HANG_GUARD_S, which only bounds a test that is failing anyway."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready():
        if await request.is_disconnected():
            return "gone"
        if time.monotonic() > deadline:
            return "never"
        await asyncio.sleep(0.02)
    return "ready"


async def _chunks(behaviour: Behaviour) -> AsyncIterator[str]:
    deltas = [({"role": "assistant", "content": "stub"}, None), ({"content": " answer"}, None)]
    for i, (delta, finish) in enumerate([*deltas, ({}, "stop")]):
        if i == 1:
            await asyncio.sleep(behaviour.stall_s)
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub"}
        yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
    yield "data: [DONE]\n\n"


@contextmanager
def _serving(app: FastAPI) -> Iterator[str]:
    """`app` under uvicorn in a thread on a loopback port; yields its base URL."""
    url, server, thread = serve_in_thread(app, 1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def stub_server() -> Iterator[tuple[str, list[Behaviour]]]:
    current = [Behaviour()]
    with _serving(_stub_app(current)) as url:
        yield f"{url}/v1", current


@pytest.fixture
def stub(stub_server: tuple[str, list[Behaviour]]) -> Iterator[tuple[str, Behaviour]]:
    url, current = stub_server
    current[0] = Behaviour()
    yield url, current[0]


def test_request_carries_the_settings(tmp_path: Path, stub: tuple[str, Behaviour]) -> None:
    url, behaviour = stub
    chat = _chat(tmp_path, url, model="glm", api_key="sk-1", max_retries=0)
    assert chat.invoke("hi").content == "stub answer"
    ((body, authorization),) = behaviour.seen
    assert authorization == "Bearer sk-1"
    assert {k: body.get(k) for k in ("model", "temperature", "top_p", "max_completion_tokens")} == {
        "model": "glm",
        "temperature": 0.0,
        "top_p": 0.8,
        "max_completion_tokens": 64,
    }
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_streams_ask_for_usage(tmp_path: Path, stub: tuple[str, Behaviour]) -> None:
    url, behaviour = stub
    chat = _chat(tmp_path, url, model="glm", max_retries=0)
    chunks = list(chat.stream("hi"))
    ((body, _),) = behaviour.seen
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    # This remote ignores it and reports nothing: no usage, rather than a made-up one.
    assert not any(chunk.usage_metadata for chunk in chunks)


def test_slow_remote_times_out_with_one_line(tmp_path: Path, stub: tuple[str, Behaviour]) -> None:
    url, behaviour = stub
    behaviour.silent = True  # were the timeout not applied, invoke would wait for the guard
    chat = _chat(tmp_path, url, timeout_s=0.3, max_retries=0)
    with pytest.raises(LLMUnavailable) as caught:
        chat.invoke("hi")
    assert str(caught.value) == (
        f"the LLM server at {url} did not answer within 0.3 s; "
        "raise llm.openai.timeout_s if it is only slow"
    )


def test_stream_that_stalls_times_out(tmp_path: Path, stub: tuple[str, Behaviour]) -> None:
    url, behaviour = stub
    behaviour.stall_s = 5
    chat = _chat(tmp_path, url, timeout_s=0.3, max_retries=0)
    pieces = []
    with pytest.raises(LLMUnavailable, match=r"did not answer within 0\.3 s"):
        for chunk in chat.stream("hi"):
            pieces.append(chunk.text)
    assert "".join(pieces) == "stub"  # what came before the stall was delivered


def test_overloaded_remote_is_retried_with_backoff(
    tmp_path: Path, stub: tuple[str, Behaviour], caplog: pytest.LogCaptureFixture
) -> None:
    url, behaviour = stub
    behaviour.failures = 2
    chat = _chat(tmp_path, url, max_retries=2)
    caplog.set_level(logging.INFO, logger="openai")
    assert "".join(chunk.text for chunk in chat.stream("hi")) == "stub answer"
    assert len(behaviour.seen) == 3
    # The waits the openai client chose (and slept) before each retry, as it logs them, not as
    # a clock measures them: 0.5 s, then 1 s, each less up to 25 % jitter.
    waits = [r.args[0] for r in caplog.records if r.getMessage().startswith("Retrying request")]
    assert len(waits) == 2
    assert 0.375 <= waits[0] <= 0.5 and 0.75 <= waits[1] <= 1.0


def test_overloaded_remote_gives_up_after_its_retries(
    tmp_path: Path, stub: tuple[str, Behaviour]
) -> None:
    url, behaviour = stub
    behaviour.failures = 5
    chat = _chat(tmp_path, url, max_retries=1)
    with pytest.raises(LLMUnavailable) as caught:
        chat.invoke("hi")
    assert str(caught.value) == (
        f"the LLM server at {url} answered HTTP 503: the queue is full (after 1 retries)"
    )
    assert len(behaviour.seen) == 2


def test_remote_down_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    chat = _chat(tmp_path, url, max_retries=1)
    for attempt in (chat.invoke, lambda text: list(chat.stream(text))):
        with pytest.raises(LLMUnavailable) as caught:
            attempt("hi")
        message = str(caught.value)
        assert message.startswith(f"cannot reach the LLM server at {url}: ")
        assert "refused" in message.lower() and message.endswith("(after 1 retries)")
        assert "\n" not in message


def test_kbqa_server_lets_the_remote_generate_concurrently(
    tmp_path: Path, stub: tuple[str, Behaviour]
) -> None:
    from kbqa.server.app import create_app

    url, behaviour = stub
    behaviour.overlap = 2  # the remote answers once two requests are in at once
    remote = {"base_url": url, "model": "glm", "concurrency": 4, "max_retries": 0}
    settings = load_settings(
        tmp_path / "front",
        overrides={"llm": {"backend": "openai", "openai": remote}, "server": {"api_key": ""}},
    )
    with _serving(create_app(settings)) as front, ThreadPoolExecutor(4) as pool:

        def ask(i: int) -> httpx.Response:
            body = {"model": "glm", "messages": [{"role": "user", "content": f"question {i}"}]}
            return httpx.post(f"{front}/v1/chat/completions", json=body, timeout=30)

        replies = list(pool.map(ask, range(4)))
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == ["stub answer"] * 4
    assert len(behaviour.seen) == 4 and behaviour.most_in_flight >= 2  # answers overlapped
