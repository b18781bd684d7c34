"""`kbqa serve` as a user runs it: a process on loopback that answers, and on SIGTERM lets a
short answer finish, cancels a long one cleanly, and exits 0.

The process uses the `openai` backend pointed at an in-test FakeChat server, so it starts
without loading a local model; that model holds a long question's answer after a few words
until the test releases it, so the long answer is still generating when the short one is done
and when the shutdown cancels it, whatever the box's speed.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import (
    LiveServer,
    kbqa,
    kbqa_serve,
    llm_of,
    serve_with_model,
    sse_events,
    wait_until_serving,
)

from kbqa.server.errors import ShuttingDown
from kbqa.server.runner import GRACEFUL_SHUTDOWN_S
from tests.fake_chat import FakeChat

SHORT = "When does the Harbor Street bakery open?"
LONG = " ".join([SHORT] * 30)  # echoed back word by word, held after HELD_AFTER words
HELD_AFTER = 3
CANCELLING = "Cancelling the answers still generating"


def listening_on(port: int) -> set[str]:
    """Addresses with a listening TCP socket on `port`, as /proc/net/tcp{,6} write them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(host)
    return found


@pytest.fixture(scope="module")
def upstream_model() -> FakeChat:
    return FakeChat(hold_after=HELD_AFTER, holds=lambda m: LONG in m[-1].text)


@pytest.fixture(scope="module")
def upstream(docs_home: Path, upstream_model: FakeChat) -> Iterator[LiveServer]:
    server = serve_with_model(docs_home, upstream_model, {"max_new_tokens": 1000}, queue_size=4)
    yield server
    upstream_model.release()
    server.stop()


def read_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    """The process's stderr lines up to the first one containing `marker` (AssertionError if
    the process ends first)."""
    assert process.stderr is not None
    lines: list[str] = []
    while marker not in (line := process.stderr.readline()):
        assert line, f"kbqa serve ended without logging {marker!r}: {''.join(lines)}"
        lines.append(line)
    return [*lines, line]


def test_serve_on_loopback_answers_then_shuts_down_cleanly(
    docs_home: Path, upstream: LiveServer, upstream_model: FakeChat
) -> None:
    process, url = kbqa_serve(docs_home, **llm_of(upstream))
    try:
        wait_until_serving(process, url)
        assert listening_on(httpx.URL(url).port) == {"0100007F"}  # 127.0.0.1 and nothing else
        chat = httpx.post(f"{url}/", json={"prompt": SHORT, "history": []}, timeout=60)
        assert chat.status_code == 200 and "bakery" in chat.json()["response"]

        with (
            httpx.stream(
                "POST", f"{url}/v1/ask", json={"question": SHORT, "stream": True}
            ) as short,
            httpx.stream("POST", f"{url}/v1/ask", json={"question": LONG, "stream": True}) as long,
        ):
            short_events, long_events = sse_events(short), sse_events(long)
            assert next(short_events)["type"] == next(long_events)["type"] == "sources"
            upstream_model.wait_until(lambda m: m.held == 1, "the long answer is mid-way")
            process.send_signal(signal.SIGTERM)
            assert list(short_events)[-1]["type"] == "done"  # a short answer finishes…
            assert upstream_model.held == 1  # …while the long one still generates
            # Near the end of the grace period the server cancels it, at its next token.
            logged = read_until(process, CANCELLING)
            upstream_model.release()
            assert list(long_events)[-1] == {"type": "error", "message": ShuttingDown().message}
        _, rest = process.communicate(timeout=GRACEFUL_SHUTDOWN_S + 30)
    finally:
        process.kill()
    stderr = "".join(logged) + rest
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "Shutting down" in stderr


def test_serve_with_a_bad_configuration_is_one_line_and_exit_2(tmp_path: Path) -> None:
    process = kbqa("serve", "--home", str(tmp_path), KBQA_LLM__BACKEND="chatglm2")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("error: llm.backend is chatglm2")
    assert "Traceback" not in stderr
