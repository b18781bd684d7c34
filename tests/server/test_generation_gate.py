"""The bounded generation queue, on its own: admission, slots, cancellation, timeouts.

The generations here are held: after its first item a producer waits for the test's `go`, so
"still generating" is a state the test sets, and a cancel shows as the worker stopping at the
item after `go` instead of running through all 1,000."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterator

import pytest

from kbqa.server.errors import ShuttingDown
from kbqa.server.generation import GenerationGate, GenerationTimeout, QueueFull
from tests.waiting import HANG_GUARD_S


def held(log: list[int], go: threading.Event) -> Callable[[threading.Event], Iterator[int]]:
    """Yields 0, then 1…999 once `go` is set, stopping early when cancelled."""

    def produce(cancel: threading.Event) -> Iterator[int]:
        for i in range(1000):
            if i == 1 and not go.wait(HANG_GUARD_S):
                raise AssertionError("the test never let the generation go on")
            if cancel.is_set():
                return
            log.append(i)
            yield i

    return produce


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` from the event loop; the timeout only bounds a hang."""
    async with asyncio.timeout(HANG_GUARD_S):
        while not condition():
            await asyncio.sleep(0.005)


async def test_admits_concurrency_plus_queue_then_refuses() -> None:
    gate = GenerationGate(concurrency=1, queue_size=2, timeout_s=10)
    tickets = [gate.admit() for _ in range(3)]
    with pytest.raises(QueueFull) as refused:
        gate.admit()
    assert refused.value.status == 503
    assert int(refused.value.headers["Retry-After"]) >= 1
    tickets[0].release()
    gate.admit().release()  # a released place is free again
    for ticket in tickets[1:]:
        ticket.release()
    assert gate.waiting == 0 and gate.running == 0


async def test_one_generation_at_a_time_in_admission_order() -> None:
    gate = GenerationGate(concurrency=1, queue_size=4, timeout_s=10)
    names = [f"r{i}" for i in range(5)]
    started: list[str] = []
    finish = {name: threading.Event() for name in names}

    def work(name: str) -> Callable[[threading.Event], str]:
        def fn(cancel: threading.Event) -> str:
            started.append(name)
            assert finish[name].wait(HANG_GUARD_S), "the test never let it finish"
            return name

        return fn

    async def run(name: str) -> str:
        async with gate.admit() as ticket:
            return await ticket.call(work(name))

    def held_with_the_rest_waiting(i: int) -> Callable[[], bool]:
        return lambda: len(started) > i and gate.waiting == len(names) - 1 - i

    answers = asyncio.gather(*(run(name) for name in names))
    for i, name in enumerate(names):
        # The i-th generation is held while the ones after it wait at the gate: a gate that
        # let a second through would have started it by now.
        await until(held_with_the_rest_waiting(i))
        assert started == names[: i + 1] and gate.running == 1
        finish[name].set()
    assert await answers == names


async def test_a_consumer_that_stops_cancels_and_keeps_the_slot_until_the_worker_stops() -> None:
    gate = GenerationGate(concurrency=1, queue_size=1, timeout_s=10)
    produced: list[int] = []
    go = threading.Event()
    ticket = gate.admit()
    stream = ticket.stream(held(produced, go))
    assert await anext(stream) == 0
    await stream.aclose()
    ticket.release()
    assert ticket.cancel.is_set()
    assert gate.running == 1 and gate.stopping == 1  # the worker, held, has the slot still
    go.set()
    await until(lambda: gate.running == 0)
    assert gate.waiting == 0 and gate.stopping == 0
    assert produced == [0]


async def test_timeout_while_generating_cancels_the_worker() -> None:
    gate = GenerationGate(concurrency=1, queue_size=1, timeout_s=0.2)
    produced: list[int] = []
    go = threading.Event()
    # Held, the generation never ends on its own: only the timeout can end the request.
    with pytest.raises(GenerationTimeout) as timed_out:
        async with gate.admit() as ticket:
            async for _ in ticket.stream(held(produced, go)):
                pass
    assert timed_out.value.status == 503 and timed_out.value.code == "timeout"
    assert gate.stopping == 1
    go.set()
    await until(lambda: gate.running == 0)
    assert produced == [0]


async def test_timeout_while_waiting_for_a_slot() -> None:
    gate = GenerationGate(concurrency=1, queue_size=1, timeout_s=0.2)
    go = threading.Event()
    busy = gate.admit()
    stream = busy.stream(held([], go))
    await anext(stream)
    with pytest.raises(GenerationTimeout):
        async with gate.admit() as waiting:
            await waiting.call(lambda cancel: "never")
    await stream.aclose()
    busy.release()
    go.set()
    await until(lambda: gate.running == 0)


async def test_errors_reach_the_caller_and_free_the_slot() -> None:
    gate = GenerationGate(concurrency=1, queue_size=0, timeout_s=5)

    def broken(cancel: threading.Event) -> str:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        async with gate.admit() as ticket:
            await ticket.call(broken)
    await until(lambda: gate.running == 0 and gate.waiting == 0)
    async with gate.admit() as ticket:
        assert await ticket.call(lambda cancel: 42) == 42


async def test_close_cancels_everything_and_admits_nothing_more() -> None:
    gate = GenerationGate(concurrency=1, queue_size=3, timeout_s=5)
    produced: list[int] = []
    go = threading.Event()
    running = gate.admit()
    stream = running.stream(held(produced, go))
    await anext(stream)
    waiting = gate.admit()
    gate.close()
    assert running.cancel.is_set() and running.interrupted and waiting.interrupted
    with pytest.raises(ShuttingDown):
        gate.admit()
    go.set()
    assert await gate.wait_idle(HANG_GUARD_S)
    assert produced == [0]
    await stream.aclose()
    for ticket in (running, waiting):
        ticket.release()


async def test_generations_reuse_worker_threads_with_a_fresh_context() -> None:
    gate = GenerationGate(concurrency=2, queue_size=4, timeout_s=10)
    seen: list[tuple[threading.Thread, str | None]] = []
    leftover: contextvars.ContextVar[str] = contextvars.ContextVar("leftover")

    def fn(cancel: threading.Event) -> None:
        seen.append((threading.current_thread(), leftover.get(None)))
        leftover.set("from an earlier generation")

    async def run() -> None:
        async with gate.admit() as ticket:
            await ticket.call(fn)

    for _ in range(3):
        await run()
        # A worker counts itself idle after handing its result over.
        await until(lambda: gate._workers._idle > 0)
    await asyncio.gather(run(), run())
    assert len({thread for thread, _ in seen}) <= 2, "no more threads than generations at once"
    assert seen[1][0] == seen[0][0], "a finished generation's thread takes the next one"
    assert {value for _, value in seen} == {None}, "each generation starts in a fresh context"
