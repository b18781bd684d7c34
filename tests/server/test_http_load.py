"""Fifty concurrent askers against a small generation queue: every request gets its own
answer or a documented 503 with Retry-After, nothing else; retried, every answer arrives."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from server_helpers import EchoChat, LiveServer, serve_with_model, sse_events

ASKERS = 50
QUEUE_SIZE = 3


def ask_until_answered(server: LiveServer, asker: int) -> tuple[list[int], str]:
    """Ask (streaming for even askers) until answered; the statuses seen and the answer."""
    question = f"How much does the Zephyr-9 widget weigh, asks asker {asker}?"
    stream = asker % 2 == 0
    statuses: list[int] = []
    with server.client() as client:
        for _ in range(400):
            with client.stream(
                "POST", "/v1/ask", json={"question": question, "stream": stream}
            ) as response:
                statuses.append(response.status_code)
                if response.status_code == 503:
                    response.read()
                    assert response.json()["error"]["code"] == "queue_full"
                    assert int(response.headers["retry-after"]) >= 1
                    time.sleep(0.02 + 0.001 * asker)
                    continue
                assert response.status_code == 200, response.read()
                if stream:
                    events = list(sse_events(response))
                    assert [e["type"] for e in events][:: len(events) - 1] == ["sources", "done"]
                    return statuses, events[-1]["answer"]
                response.read()
                return statuses, str(response.json()["answer"])
    raise AssertionError(f"asker {asker} never got an answer")


def test_fifty_concurrent_askers(docs_home: Path) -> None:
    # Each answer must be the asker's own echo: the model's text, never a quote of the sources.
    server = serve_with_model(
        docs_home, EchoChat(delay=0.002), answer_mode="generate", queue_size=QUEUE_SIZE
    )
    peaks = {"running": 0, "in": 0}
    done = threading.Event()

    def watch_queue() -> None:
        with server.client() as client:
            while not done.is_set():
                queue = client.get("/healthz").json()["queue"]
                peaks["running"] = max(peaks["running"], queue["running"])
                # Admitted requests, running or waiting. Not "waiting" alone: the moment a
                # generation ends, its slot is free before the next request takes it, and all
                # the admitted ones are briefly waiting (1 + QUEUE_SIZE of them).
                peaks["in"] = max(peaks["in"], queue["running"] + queue["waiting"])
                time.sleep(0.005)

    watcher = threading.Thread(target=watch_queue)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=ASKERS) as pool:
            results = list(pool.map(lambda i: ask_until_answered(server, i), range(ASKERS)))
    finally:
        done.set()
        watcher.join()
        server.stop()

    statuses = [s for seen, _ in results for s in seen]
    assert set(statuses) == {200, 503}, "a full queue must have refused some requests"
    assert statuses.count(200) == ASKERS
    for asker, (_, answer) in enumerate(results):
        # EchoChat answers with the question's own words: each answer names its own asker.
        assert re.findall(r"asker (\d+)", answer) == [str(asker)], answer
    assert peaks["running"] <= 1 and peaks["in"] <= 1 + QUEUE_SIZE
