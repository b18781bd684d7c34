"""Parsing where it can be stopped: worker processes with a deadline and a memory cap per file.

Which formats: .txt, .md and .markdown are parsed in the calling process. Their loaders
decode the bytes and scan the text once (bounded by `ingest.max_file_mb`, no inflating, no
nesting), they are most of the files in a big folder, and a round trip to a worker per small
file would be pure overhead. Every other format goes to a worker: zip-based Office files,
PDFs, images, HTML, CSV and JSON parsers inflate, build trees or render, so their time and
memory can grow far past the file's size. With a loader plugin configured, every file does
(a plugin's code is not known to be safe).

Workers are forked from multiprocessing's fork server, which imports the loaders once: a new
worker costs a fork, not an interpreter start and the imports (seconds), and it is a clean
single-threaded process, unlike a fork of the server (threads, torch). A worker stays warm
between files and runs; each caller running at the same time gets one of its own, so a stuck
parse for one job never holds another's.

- Memory: the worker caps its address space (RLIMIT_AS) at its size after start-up plus
  `ingest.parse_memory_mb`; an allocation past it fails there (`parse_memory`) and the
  server's or the CLI's own memory never grows with a hostile file.
- Time: the caller waits on the worker's pipe until `ingest.parse_timeout_s`, then kills it
  (SIGKILL: a parser stuck inside C code cannot be interrupted any other way) and the file
  fails with `parse_timeout`. A worker that dies is replaced; its file fails `parse_crashed`.
- Stop: a `Stop` (an upload job's deadline, server shutdown) is polled while waiting, so a
  parse is cancelled within a tenth of a second of it.
- Orphans: a worker is killed when the fork server exits (PR_SET_PDEATHSIG), and the fork
  server exits when the process that started it does, however that ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from kbqa.ingest.config import IngestConfig, IngestOptions
from kbqa.ingest.loaders import load_document
from kbqa.ingest.types import IngestUsageError, LoadError, LoadOptions, ParseLimits, Section

IN_PROCESS: frozenset[str] = frozenset({".txt", ".md", ".markdown"})
"""Extensions parsed in the calling process (see the module docstring)."""

PARSE_TIMEOUT = "parse_timeout"
PARSE_MEMORY = "parse_memory"
PARSE_CRASHED = "parse_crashed"
DEADLINE = "deadline"
"""`Stop.reason` once its deadline has passed."""

START_S = 120.0
"""How long a new worker may take to start (the first one starts the fork server: seconds)."""
POLL_S = 0.1
"""How often a caller waiting on a worker looks at its Stop."""
KEEP_IDLE = 2
"""Idle workers kept warm; more are started while more callers parse at once."""
RECYCLE_RSS_KB = 512 * 1024
"""A worker left holding more memory than this by a large file is not kept warm: Python
seldom hands a grown heap back, and an idle server should not sit on it."""
_PR_SET_PDEATHSIG = 1

_CONTEXT = multiprocessing.get_context("forkserver")
# The fork server imports the loaders (and this module's own imports) once, for every worker.
_CONTEXT.set_forkserver_preload(["kbqa.ingest.isolation"])


class ParseStopped(Exception):
    """The run was told to stop (its deadline passed, or the server is stopping)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"ingest stopped: {reason}")
        self.reason = reason


class Stop:
    """Tells a run's parses to stop: once `timeout_s` has passed, or when `set` is called."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._reason: str | None = None

    def set(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    @property
    def reason(self) -> str | None:
        expired = self._deadline is not None and time.monotonic() >= self._deadline
        if self._reason is None and expired:
            self._reason = DEADLINE
        return self._reason

    def check(self) -> None:
        """Raise ParseStopped if the run should stop."""
        reason = self.reason
        if reason is not None:
            raise ParseStopped(reason)


def parse_limits(ingest: IngestOptions) -> ParseLimits:
    return ParseLimits(
        max_unpacked_mb=ingest.max_unpacked_mb,
        max_compression_ratio=ingest.max_compression_ratio,
        max_image_pixels=ingest.max_image_pixels,
        max_pages=ingest.max_pages,
    )


def load_plugins(names: Sequence[str]) -> None:
    """Import the modules of `ingest.loader_plugins` (each registers its loaders on import)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or the plugin's own error while registering
            message = f"cannot import loader plugin {name} (ingest.loader_plugins): {e}"
            raise IngestUsageError(message) from e


class WorkerPool:
    """Worker processes that parse one file at a time each; thread-safe, started lazily."""

    def __init__(self, memory_mb: int, plugins: Sequence[str] = ()) -> None:
        self.memory_mb = memory_mb
        self.plugins = tuple(plugins)
        load_plugins(self.plugins)  # here first: a broken plugin is one clear error
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False

    def parse(
        self,
        path: Path,
        *,
        max_bytes: int,
        options: LoadOptions,
        timeout_s: float,
        stop: Stop | None = None,
    ) -> list[Section]:
        """`load_document` in a worker, killed past `timeout_s` or when `stop` says so."""
        worker = self._acquire()
        try:
            reply = worker.run(path, max_bytes, options, timeout_s, stop, self)
        except BaseException:
            self._discard(worker)
            raise
        if reply[0] == "ok":
            self._release(worker)
            sections: list[Section] = reply[1]
            return sections
        _, code, message = reply
        if code == PARSE_MEMORY:
            self._discard(worker)  # its heap is now as large as the cap allows
        else:
            self._release(worker)
        raise LoadError(message, code=code)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop every worker; parses running now end with ParseStopped("shutdown")."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _acquire(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise ParseStopped("shutdown")
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    self._busy.add(worker)
                    return worker
                worker.kill()
        worker = _Worker(self.memory_mb, self.plugins)
        with self._lock:
            self._busy.add(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        keep = worker.rss_kb() <= RECYCLE_RSS_KB
        with self._lock:
            self._busy.discard(worker)
            if keep and not self._closed and len(self._idle) < KEEP_IDLE:
                self._idle.append(worker)
                return
        worker.kill()

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._busy.discard(worker)
        worker.kill()


class FileParser:
    """Loads one file after another for a run: safe formats here, the rest in `pool`.

    `stop` ends the run's current parse and refuses the next (ParseStopped).
    """

    def __init__(
        self,
        pool: WorkerPool,
        timeout_s: float,
        *,
        stop: Stop | None = None,
        owns_pool: bool = False,
    ) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.stop = stop
        self._owns_pool = owns_pool

    @classmethod
    def for_run(cls, settings: IngestConfig, stop: Stop | None = None) -> FileParser:
        """A parser with a pool of its own, closed with it (the CLI: one run per process)."""
        pool = WorkerPool(settings.ingest.parse_memory_mb, settings.ingest.loader_plugins)
        return cls(pool, settings.ingest.parse_timeout_s, stop=stop, owns_pool=True)

    def load(self, path: Path, *, max_bytes: int, options: LoadOptions) -> list[Section]:
        if self.stop is not None:
            self.stop.check()
        if path.suffix.lower() in IN_PROCESS and not self.pool.plugins:
            return load_document(path, max_bytes=max_bytes, options=options)
        return self.pool.parse(
            path, max_bytes=max_bytes, options=options, timeout_s=self.timeout_s, stop=self.stop
        )

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> FileParser:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, memory_mb: int, plugins: tuple[str, ...]) -> None:
        self.memory_mb = memory_mb
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(
            target=_serve,
            args=(child, list(sys.path), plugins, memory_mb),
            name="kbqa-parse",
            daemon=True,
        )
        self.process.start()
        child.close()  # so that the worker's death reads as end-of-file here
        # The parse deadline starts once the worker is ready, not while it starts.
        try:
            ready = self.conn.poll(START_S) and self.conn.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise self._death()

    def alive(self) -> bool:
        return self.process.is_alive()

    def rss_kb(self) -> int:
        """The worker's resident memory in KB (0 where /proc cannot say)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text(encoding="ascii")
            return int(status.split("VmRSS:", 1)[1].split()[0])
        except (OSError, IndexError, ValueError):
            return 0

    def run(
        self,
        path: Path,
        max_bytes: int,
        options: LoadOptions,
        timeout_s: float,
        stop: Stop | None,
        pool: WorkerPool,
    ) -> tuple[Any, ...]:
        """The worker's reply: ("ok", sections) or ("error", code, message).

        Raises LoadError (timeout, death) or ParseStopped; the worker is then unusable.
        """
        try:
            self.conn.send((str(path), max_bytes, replace(options, on_page=None)))
        except OSError:
            raise self._death() from None
        deadline = time.monotonic() + timeout_s
        while True:
            if stop is not None:
                stop.check()
            if pool.closed:
                raise ParseStopped("shutdown")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadError(
                    f"parsing took longer than {timeout_s:g} s (ingest.parse_timeout_s); stopped",
                    code=PARSE_TIMEOUT,
                )
            if not self.conn.poll(min(remaining, POLL_S)):
                continue
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                raise self._death() from None
            if message[0] == "page":
                options.page_done(message[1], message[2])
                continue
            return tuple(message)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def _death(self) -> LoadError:
        self.process.join(5)
        code = self.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"status {code}"
        return LoadError(
            f"the parser process died ({how}): a corrupt file, or one that needs more than "
            f"{self.memory_mb} MB (ingest.parse_memory_mb)",
            code=PARSE_CRASHED,
        )


def _serve(conn: Connection, path: list[str], plugins: tuple[str, ...], memory_mb: int) -> None:
    """A worker's life: parse each (path, max_bytes, options) it is sent, reply, repeat."""
    _die_with_parent()
    _let_fork_server_go()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: ours decides
    sys.path.extend(entry for entry in path if entry not in sys.path)  # plugins from tests, …
    load_plugins(plugins)
    near_cap = _cap_memory(memory_mb)
    try:
        _answer(conn, near_cap, memory_mb)
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent went away mid-reply (interrupted, killed): nobody left to tell


def _answer(conn: Connection, near_cap: int | None, memory_mb: int) -> None:
    """Say ready, then parse each (path, max_bytes, options) sent and reply, until the parent
    closes its end."""
    conn.send(("ready",))
    while True:
        try:
            file, max_bytes, options = conn.recv()
        except (EOFError, OSError):
            return

        def page_done(done: int, total: int) -> None:
            conn.send(("page", done, total))

        options = replace(options, on_page=page_done)
        reply: tuple[Any, ...]
        try:
            reply = ("ok", load_document(Path(file), max_bytes=max_bytes, options=options))
        except LoadError as e:
            reply = ("error", e.code, str(e))
        except MemoryError:
            reply = ("error", PARSE_MEMORY, "")
        if reply[0] == "error" and near_cap is not None and (_vm_kb("VmPeak") or 0) >= near_cap:
            # A library that reports a failed allocation as its own error (lxml: "Memory
            # allocation failed", wrapped as a corrupt file) still ran into the cap.
            reply = ("error", PARSE_MEMORY, "")
        if reply[0] == "error" and reply[1] == PARSE_MEMORY:
            reply = ("error", PARSE_MEMORY, _memory_message(memory_mb))
        try:
            conn.send(reply)
        except MemoryError:  # the sections were too many to pickle within the cap
            conn.send(("error", PARSE_MEMORY, _memory_message(memory_mb)))


def _memory_message(memory_mb: int) -> str:
    return f"parsing needed more than {memory_mb} MB of memory (ingest.parse_memory_mb); stopped"


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent (the fork server) exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's end-of-file still ends an idle one
        pass


def _let_fork_server_go() -> None:
    """Close this worker's copy of the fork server's "alive" pipe.

    multiprocessing hands every forked child the write end of the pipe on whose end-of-file
    the fork server exits, so a worker stuck in a parse would keep the fork server, and with
    it itself (PR_SET_PDEATHSIG), alive after the ingesting process was killed. Without the
    copy, the fork server exits with that process and the kernel kills the worker."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _cap_memory(memory_mb: int) -> int | None:
    """Cap the address space at today's size plus `memory_mb` (imports already mapped).

    Returns the peak size, in KB, past which a failed parse counts as having hit the cap
    (three quarters of the way: a parser's last, failed request may have been large), or
    None where the size cannot be read (then nothing is capped).
    """
    size = _vm_kb("VmSize")
    if size is None:
        return None
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size * 1024 + memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return size + memory_mb * 1024 * 3 // 4


def _vm_kb(field: str) -> int | None:
    """A size from /proc/self/status (VmSize, VmPeak), in KB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(li for li in status if li.startswith(f"{field}:"))
        return int(line.split()[1])
    except (OSError, StopIteration, ValueError):
        return None
