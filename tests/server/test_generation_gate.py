"""The bounded generation queue, on its own: admission, slots, cancellation, timeouts."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kbqa.server.generation import GenerationGate, GenerationTimeout, QueueFull, ShuttingDown


def counting(n: int, delay: float, log: list[int]) -> Callable[[threading.Event], Iterator[int]]:
    def produce(cancel: threading.Event) -> Iterator[int]:
        for i in range(n):
            if cancel.is_set():
                return
            time.sleep(delay)
            log.append(i)
            yield i

    return produce


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
    order: list[str] = []
    running = 0
    most = 0

    def work(name: str) -> Callable[[threading.Event], str]:
        def fn(cancel: threading.Event) -> str:
            nonlocal running, most
            running += 1
            most = max(most, running)
            time.sleep(0.02)
            order.append(name)
            running -= 1
            return name

        return fn

    async def run(name: str) -> str:
        async with gate.admit() as ticket:
            return await ticket.call(work(name))

    results = await asyncio.gather(*(run(f"r{i}") for i in range(5)))
    assert results == [f"r{i}" for i in range(5)]
    assert order == results and most == 1


async def test_a_consumer_that_stops_cancels_and_keeps_the_slot_until_the_worker_stops() -> None:
    gate = GenerationGate(concurrency=1, queue_size=1, timeout_s=10)
    produced: list[int] = []
    ticket = gate.admit()
    stream = ticket.stream(counting(1000, 0.01, produced))
    assert await anext(stream) == 0
    await stream.aclose()
    ticket.release()
    assert ticket.cancel.is_set()
    for _ in range(100):
        if gate.running == 0:
            break
        await asyncio.sleep(0.01)
    assert gate.running == 0 and gate.waiting == 0
    stopped_at = len(produced)
    await asyncio.sleep(0.1)
    assert len(produced) == stopped_at < 10


async def test_timeout_while_generating_cancels_the_worker() -> None:
    gate = GenerationGate(concurrency=1, queue_size=1, timeout_s=0.2)
    produced: list[int] = []
    started = time.monotonic()
    with pytest.raises(GenerationTimeout) as timed_out:
        async with gate.admit() as ticket:
            async for _ in ticket.stream(counting(1000, 0.01, produced)):
                pass
    # Unbounded, the worker would produce for 10 s; the timeout stops it long before.
    assert time.monotonic() - started < 5
    assert len(produced) < 500
    assert timed_out.value.status == 503 and timed_out.value.code == "timeout"
    await asyncio.sleep(0.1)
    assert gate.running == 0 and len(produced) < 40


async def test_timeout_while_waiting_for_a_slot() -> None:
    gate = GenerationGate(concurrency=1, queue_size=1, timeout_s=0.2)
    busy = gate.admit()
    stream = busy.stream(counting(1000, 0.01, []))
    await anext(stream)
    with pytest.raises(GenerationTimeout):
        async with gate.admit() as waiting:
            await waiting.call(lambda cancel: "never")
    await stream.aclose()
    busy.release()


async def test_errors_reach_the_caller_and_free_the_slot() -> None:
    gate = GenerationGate(concurrency=1, queue_size=0, timeout_s=5)

    def broken(cancel: threading.Event) -> str:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        async with gate.admit() as ticket:
            await ticket.call(broken)
    for _ in range(100):
        if gate.running == 0 and gate.waiting == 0:
            break
        await asyncio.sleep(0.01)
    async with gate.admit() as ticket:
        assert await ticket.call(lambda cancel: 42) == 42


async def test_close_cancels_everything_and_admits_nothing_more() -> None:
    gate = GenerationGate(concurrency=1, queue_size=3, timeout_s=5)
    produced: list[int] = []
    running = gate.admit()
    stream = running.stream(counting(1000, 0.01, produced))
    await anext(stream)
    waiting = gate.admit()
    gate.close()
    assert running.cancel.is_set() and running.interrupted and waiting.interrupted
    with pytest.raises(ShuttingDown):
        gate.admit()
    assert await gate.wait_idle(2)
    assert len(produced) < 10
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

    async def until_idle() -> None:  # a worker counts itself idle after handing its result over
        async with asyncio.timeout(10):
            while gate._workers._idle == 0:
                await asyncio.sleep(0.005)

    for _ in range(3):
        await run()
        await until_idle()
    await asyncio.gather(run(), run())
    assert len({thread for thread, _ in seen}) <= 2, "no more threads than generations at once"
    assert seen[1][0] == seen[0][0], "a finished generation's thread takes the next one"
    assert {value for _, value in seen} == {None}, "each generation starts in a fresh context"
