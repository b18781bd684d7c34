"""Fifty concurrent askers against a small generation queue: every request gets its own
answer or a documented 503 with Retry-After, nothing else; retried, every answer arrives.

The model holds every answer at its first word until the queue is full and some asker has been
refused, so the refusals are certain rather than a matter of how fast the box is."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from server_helpers import LiveServer, serve_with_model, sse_events

from tests.fake_chat import FakeChat
from tests.waiting import HANG_GUARD_S, wait_for

ASKERS = 50
QUEUE_SIZE = 3


def ask_until_answered(
    server: LiveServer, asker: int, refused: threading.Semaphore
) -> tuple[list[int], str]:
    """Ask (streaming for even askers) until answered; the statuses seen and the answer."""
    question = f"How much does the Zephyr-9 widget weigh, asks asker {asker}?"
    stream = asker % 2 == 0
    statuses: list[int] = []
    deadline = time.monotonic() + HANG_GUARD_S  # bounds a hang only: the retries are not counted
    with server.client() as client:
        while time.monotonic() < deadline:
            with client.stream(
                "POST", "/v1/ask", json={"question": question, "stream": stream}
            ) as response:
                statuses.append(response.status_code)
                if response.status_code == 503:
                    response.read()
                    assert response.json()["error"]["code"] == "queue_full"
                    assert int(response.headers["retry-after"]) >= 1
                    refused.release()
                    time.sleep(0.02 + 0.001 * asker)  # a client's back-off, shorter than asked
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
    model = FakeChat(hold_after=0)
    server = serve_with_model(docs_home, model, answer_mode="generate", queue_size=QUEUE_SIZE)
    gate = server.app.state.kbqa.gate
    peaks = {"running": 0, "in": 0}
    done = threading.Event()
    refused = threading.Semaphore(0)

    def watch_queue() -> None:
        with server.client() as client:
            while not done.is_set():
                queue = client.get("/healthz").json()["queue"]
                peaks["running"] = max(peaks["running"], queue["running"])
                # Admitted requests, running or waiting. Not "waiting" alone: the moment a
                # generation ends, its slot is free before the next request takes it, and all
                # the admitted ones are briefly waiting (1 + QUEUE_SIZE of them).
                peaks["in"] = max(peaks["in"], queue["running"] + queue["waiting"])
                time.sleep(0.005)  # a sampler: the peaks are bounds, never counted on to be hit

    watcher = threading.Thread(target=watch_queue)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=ASKERS) as pool:
            asked = [pool.submit(ask_until_answered, server, i, refused) for i in range(ASKERS)]
            wait_for(lambda: gate.running + gate.waiting == 1 + QUEUE_SIZE, "the queue is full")
            assert refused.acquire(timeout=HANG_GUARD_S), "a full queue refused nobody"
            model.release()
            results = [future.result() for future in asked]
    finally:
        model.release()
        done.set()
        watcher.join()
        server.stop()

    statuses = [s for seen, _ in results for s in seen]
    assert set(statuses) == {200, 503}
    assert statuses.count(200) == ASKERS
    for asker, (_, answer) in enumerate(results):
        # FakeChat answers with the question's own words: each answer names its own asker.
        assert re.findall(r"asker (\d+)", answer) == [str(asker)], answer
    assert peaks["running"] <= 1 and peaks["in"] <= 1 + QUEUE_SIZE
