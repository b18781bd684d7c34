"""The bounded generation queue.

The model generates for `concurrency` requests at a time (one for the bundled model and the
local ChatGLM2); at most `queue_size` more wait in line. A request beyond that is refused at
once with 503 and `Retry-After` rather than queued without bound. Each request has a deadline
(`server.request_timeout_s`) covering its wait and its generation.

Generation runs in a worker thread that hands what it produces to the event loop. Whoever
stops listening (a client that disconnects mid-stream, a timeout, shutdown) sets the request's
`cancel` event; the worker stops after the current token, and the request keeps its slot until
the worker has really stopped, so two generations never share the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from kbqa.server.errors import ApiError, ShuttingDown

T = TypeVar("T")
log = logging.getLogger("kbqa.server")

_ITEM, _ERROR, _END = "item", "error", "end"


class QueueFull(ApiError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            503,
            "queue_full",
            "the generation queue is full; retry later",
            headers={"Retry-After": str(retry_after_s)},
        )


class GenerationTimeout(ApiError):
    def __init__(self, timeout_s: float, retry_after_s: int) -> None:
        super().__init__(
            503,
            "timeout",
            f"the answer took longer than the {timeout_s:g} s request timeout",
            headers={"Retry-After": str(retry_after_s)},
        )


class WorkerThreads:
    """Daemon threads kept from one generation to the next.

    `Thread.start()` blocks the event loop until the new thread has run, which takes a GIL
    hand-over: p90 4 ms on a loaded 2-core box, 14 ms beside a busy thread (the model's).
    Handing a job to an idle thread is a queue put. There are never more threads than jobs
    that ran at the same time; each job runs in a fresh `contextvars` context, as in a new thread.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that thread takes this job (or another one's; same count)
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._serve, name=self._name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            contextvars.Context().run(self._jobs.get())
            with self._lock:
                self._idle += 1


class GenerationGate:
    """Admission control and the worker threads of generation. Use from the event loop only."""

    def __init__(self, *, concurrency: int, queue_size: int, timeout_s: float) -> None:
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._admitted = 0
        self._running = 0
        self._slots: asyncio.Semaphore | None = None
        self._tickets: set[Ticket] = set()
        self._mean_s = 5.0
        """Running mean of one generation's duration, for Retry-After."""
        self.closing = False
        """Set by `close()`: nothing new starts, what runs is cancelled."""
        self._workers = WorkerThreads("kbqa-generation")

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._admitted - self._running

    @property
    def stopping(self) -> int:
        """Generations told to stop whose worker has not stopped yet (it stops at its next
        token). Read-only, so safe from another thread: tests wait on it."""
        tickets = tuple(self._tickets)  # one C-level copy: the loop may add or drop tickets
        return sum(1 for ticket in tickets if ticket._worker_started and ticket.cancel.is_set())

    @property
    def retry_after_s(self) -> int:
        per_slot = self._mean_s * (self.waiting + 1) / self.concurrency
        return max(1, min(120, math.ceil(per_slot)))

    def admit(self) -> Ticket:
        """A place in line, or QueueFull when `concurrency + queue_size` requests are in."""
        if self.closing:
            raise ShuttingDown()
        if self._admitted >= self.concurrency + self.queue_size:
            raise QueueFull(self.retry_after_s)
        self._admitted += 1
        ticket = Ticket(self)
        self._tickets.add(ticket)
        return ticket

    def close(self) -> None:
        """Shutdown: admit nothing more; every admitted request stops at its next token."""
        self.closing = True
        for ticket in list(self._tickets):
            ticket.interrupted = True
            ticket.cancel.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no worker thread runs (a cancelled one ends after its current token)."""
        deadline = time.monotonic() + timeout_s
        while self._running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self._running == 0

    def _semaphore(self) -> asyncio.Semaphore:
        # Created lazily so that it belongs to the running loop (uvicorn's, or a test's).
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    def _worker_finished(self, ticket: Ticket, seconds: float) -> None:
        self._running -= 1
        self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
        self._semaphore().release()
        self._leave(ticket)

    def _leave(self, ticket: Ticket) -> None:
        if ticket in self._tickets:
            self._tickets.discard(ticket)
            self._admitted -= 1


class Ticket:
    """One admitted request. Release it exactly once: `async with` or `release()`."""

    def __init__(self, gate: GenerationGate) -> None:
        self.gate = gate
        self.cancel = threading.Event()
        self.deadline = time.monotonic() + gate.timeout_s
        self.interrupted = False
        """Cancelled by shutdown: what it produced last is not a whole answer."""
        self._worker_started = False
        self._released = False

    async def __aenter__(self) -> Ticket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """The request is over. Its worker, if one started, gives the slot back when it stops."""
        if self._released:
            return
        self._released = True
        self.cancel.set()
        if not self._worker_started:
            self.gate._leave(self)

    async def call(self, fn: Callable[[threading.Event], T]) -> T:
        """Run `fn(cancel)` in a worker thread once a slot is free; its result."""
        async for result in self.stream(lambda cancel: iter((fn(cancel),))):
            return result
        raise RuntimeError("generation produced no result")

    async def stream(
        self, produce: Callable[[threading.Event], Iterator[T]]
    ) -> AsyncGenerator[T, None]:
        """Wait for a slot, run `produce(cancel)` in a worker thread and yield what it yields."""
        if self._worker_started:
            raise RuntimeError("a ticket runs one generation")
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        try:
            await self._acquire_slot()
            if self.gate.closing:
                self.gate._semaphore().release()
                raise ShuttingDown()
            self._start_worker(produce, items)
            while True:
                kind, value = await self._next(items)
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise value
                yield value
        finally:
            self.cancel.set()

    async def _acquire_slot(self) -> None:
        try:
            async with asyncio.timeout(max(0.0, self.deadline - time.monotonic())):
                await self.gate._semaphore().acquire()
        except TimeoutError:
            raise GenerationTimeout(self.gate.timeout_s, self.gate.retry_after_s) from None

    async def _next(self, items: asyncio.Queue[tuple[str, Any]]) -> tuple[str, Any]:
        try:
            async with asyncio.timeout(max(0.0, self.deadline - time.monotonic())):
                return await items.get()
        except TimeoutError:
            raise GenerationTimeout(self.gate.timeout_s, self.gate.retry_after_s) from None

    def _start_worker(
        self,
        produce: Callable[[threading.Event], Iterator[T]],
        items: asyncio.Queue[tuple[str, Any]],
    ) -> None:
        loop = asyncio.get_running_loop()
        gate = self.gate
        gate._running += 1
        self._worker_started = True
        started = time.monotonic()

        def post(kind: str, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: server shut down
                loop.call_soon_threadsafe(items.put_nowait, (kind, value))

        def work() -> None:
            try:
                iterator = produce(self.cancel)
                try:
                    for item in iterator:
                        post(_ITEM, item)
                        if self.cancel.is_set():
                            break
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
                post(_END, None)
            except Exception as e:  # handed to the request, which reports it
                post(_ERROR, e)
            finally:
                seconds = time.monotonic() - started
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(gate._worker_finished, self, seconds)

        gate._workers.run(work)
