"""Helpers of the browser tests: the real server on loopback, its scripted chat model, screenshots.

The server is `create_app(...)` under uvicorn on a loopback port with a temporary KBQA_HOME;
retrieval, embeddings and storage are real. The chat model is the tests' `FakeChat` with a
scripted reply (the bundled model is tested elsewhere): its answer cites [1]
and carries raw HTML, so every answer also checks that the page renders answers as text.

Screenshots go to test-artifacts/web/. Playwright's own browser downloads are never used:
Chromium comes from the Debian package at /usr/bin/chromium.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from langchain_core.messages import BaseMessage

from kbqa.server.app import create_app
from kbqa.server.generation import GenerationGate
from kbqa.settings import load_settings
from tests.fake_chat import FakeChat
from tests.server.server_helpers import serve_in_thread, wait_for_job
from tests.waiting import wait_for

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
JOB_TIMEOUT_MS = 60_000  # the first upload of a session loads the embedding model

ANSWER = (
    "The Zephyr-9 widget weighs **412 grams** [1].\n\n"
    "- painted teal\n"
    "- raw markup stays text: <img src=x onerror=\"window.__xss='answer'\"> "
    "<script>window.__xss='answer-script'</script>"
)
SLOW_WORD = "slowly"
"""A question with this word gets a long answer that stops after SLOW_SHOWN words until the
test releases the model (for the Stop button)."""
SLOW_ANSWER = " ".join(f"word{i}" for i in range(60))
SLOW_SHOWN = 4
TABLE_WORD = "tabulate"
"""A question with this word gets TABLE_ANSWER: a Markdown table, links and hostile ones."""
TABLE_ANSWER = (
    "Widgets by weight [1]:\n"
    "| Widget | Weight (g) | Colour | Notes | Supplier reference code |\n"
    "|:--|--:|:-:|---|---|\n"
    "| Zephyr-9 | **412** [1] | teal | `a\\|b` pipes | ZEPHYR-NINE-SUPPLIER-0000412 |\n"
    "| Quasar | 97 | violet | <img src=x onerror=\"window.__xss='cell'\"> "
    "| QUASAR-LAMP-SUPPLIER-97 |\n"
    "| Short |\n"
    "| Long | 1 | 2 | 3 | 4 | dropped |\n"
    "The table ends here.\n\n"
    "See [the spec](https://example.com/spec?a=1&b=2), https://example.org/docs. "
    "and [write to us](mailto:team@example.com).\n\n"
    "Inert: [run me](javascript:window.__xss='link') "
    "[data me](data:text/html,<script>window.__xss='data'</script>) [relative](/v1/kbs) "
    "[<b onclick=\"window.__xss='label'\">bold label</b>](https://example.com/label)"
)


def scripted_reply(messages: list[BaseMessage]) -> str:
    """ANSWER, or SLOW_ANSWER or TABLE_ANSWER for a question with their word."""
    question = messages[-1].text
    return (
        SLOW_ANSWER if SLOW_WORD in question else TABLE_ANSWER if TABLE_WORD in question else ANSWER
    )


def scripted_chat() -> FakeChat:
    """The server's model: a slow question's answer holds after SLOW_SHOWN words until the
    test releases it, so the page is caught mid-answer without racing a clock."""
    return FakeChat(
        reply=scripted_reply,
        hold_after=SLOW_SHOWN,
        holds=lambda messages: SLOW_WORD in messages[-1].text,
    )


@dataclass
class Server:
    url: str
    model: FakeChat
    server: uvicorn.Server
    thread: threading.Thread
    gate: GenerationGate

    def release_stopped_answer(self) -> None:
        """After the page stopped a held answer: once the server has told that generation to
        stop, let it go, wait until it has ended, and hold again for the next test. Holding again
        before the server saw the stop would catch the generation at its next word and keep the
        one generation slot from every later question."""
        gate = self.gate
        wait_for(lambda: gate.stopping == 1 or gate.running == 0, "the server stops the answer")
        self.model.release()
        wait_for(lambda: gate.running == 0 and gate.waiting == 0, "the server is idle")
        self.model.wait_until(lambda model: model.held == 0, "no generation is held")
        self.model.hold()

    def stop(self) -> None:
        self.model.release()  # a generation a failed test left held must not block the exit
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(home: Path, api_key: str = "", answer_mode: str = "generate") -> Server:
    """A server whose model is `scripted_chat()`. `answer_mode` "generate" by default: the page is
    tested on the model's own Markdown (auto mode would quote the sources instead of an
    answer they do not support, such as TABLE_ANSWER; test_web_answer_mode tests that)."""
    overrides = {"server": {"api_key": api_key}, "answer": {"mode": answer_mode}}
    settings = load_settings(home, overrides=overrides)
    model = scripted_chat()
    app = create_app(settings, chat_model=model)
    url, server, thread = serve_in_thread(app, 2)
    return Server(url, model, server, thread, app.state.kbqa.gate)


def warm_up(server: Server) -> None:
    """Load the embedding model once (creating a KB does), so page steps time only the page."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.post("/v1/kbs", json={"name": "warm-up"}).raise_for_status()
        client.delete("/v1/kbs/warm-up").raise_for_status()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# -- page steps shared by the test modules --------------------------------------------------------


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def seed_kb(server: Server, kb: str, files: dict[str, str]) -> None:
    """Create `kb` holding `files` through the HTTP API (for tests about other screens)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v1/kbs", json={"name": kb}).status_code == 201
        parts = [("files", (name, text.encode())) for name, text in files.items()]
        response = client.post(f"/v1/kbs/{kb}/documents", files=parts)
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        assert job["state"] == "done" and not job["result"]["failed"], job


def pick_only(page: Any, kb: str) -> None:
    expect(page.locator(f'#kb-choices input[value="{kb}"]')).to_be_attached()
    boxes = page.locator("#kb-choices input[name=kb]")
    for i in range(boxes.count()):
        box = boxes.nth(i)
        box.set_checked(box.get_attribute("value") == kb)


def ask(page: Any, question: str) -> Any:
    """Type `question`, press Enter; the new turn once its answer is complete."""
    page.fill("#question", question)
    page.press("#question", "Enter")
    turn = page.locator("#conversation .turn").last
    expect(turn.locator(".answer-body")).to_have_attribute("aria-busy", "false")
    return turn


def no_horizontal_overflow(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))
