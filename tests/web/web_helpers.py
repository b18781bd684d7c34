"""Helpers of the browser tests: the real server on loopback, its scripted chat model, screenshots.

The server is `create_app(...)` under uvicorn on a loopback port with a temporary KBQA_HOME;
retrieval, embeddings and storage are real. The chat model is `ScriptedChat`, a small
deterministic LangChain model (the bundled model is tested elsewhere): its answer cites [1]
and carries raw HTML, so every answer also checks that the page renders answers as text.

Screenshots go to test-artifacts/web/. Playwright's own browser downloads are never used:
Chromium comes from the Debian package at /usr/bin/chromium.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from kbqa.server.app import create_app
from kbqa.settings import load_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
API_KEY = "web-test-key-7f3a"

ANSWER = (
    "The Zephyr-9 widget weighs **412 grams** [1].\n\n"
    "- painted teal\n"
    "- raw markup stays text: <img src=x onerror=\"window.__xss='answer'\"> "
    "<script>window.__xss='answer-script'</script>"
)
SLOW_WORD = "slowly"
"""A question with this word gets a long answer streamed slowly (for the Stop button)."""
SLOW_ANSWER = " ".join(f"word{i}" for i in range(60))


class ScriptedChat(BaseChatModel):
    """Answers ANSWER (or SLOW_ANSWER, 0.1 s a word), streamed word by word."""

    @property
    def _llm_type(self) -> str:
        return "scripted-web-test"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(chunk.text for chunk in self._stream(messages, stop, run_manager))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        slow = SLOW_WORD in messages[-1].text
        for piece in re.split(r"(\s+)", SLOW_ANSWER if slow else ANSWER):
            if slow:
                time.sleep(0.1)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))


@dataclass
class Server:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(home: Path, api_key: str = "") -> Server:
    settings = load_settings(home, overrides={"server": {"api_key": api_key}})
    app = create_app(settings, chat_model=ScriptedChat())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web test server did not start")
        time.sleep(0.02)
    return Server(f"http://127.0.0.1:{port}", server, thread)


def warm_up(server: Server) -> None:
    """Load the embedding model once (creating a KB does), so page steps time only the page."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.post("/v1/kbs", json={"name": "warm-up"}).raise_for_status()
        client.delete("/v1/kbs/warm-up").raise_for_status()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
