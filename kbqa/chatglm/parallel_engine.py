"""The batching engine over tensor-parallel ranks (tensor_parallel.py): rank 0 schedules, the
other ranks repeat its model calls on their slices of the weights.

Rank 0 is an ordinary `BatchEngine` (batching.py) over its own slice, in the serving process.
Ranks 1..N-1 are processes started by `start`, each with a `BatchEngine` over its slice that
never schedules: it runs the model calls rank 0 tells it, in rank 0's order. Before each call on
the model (a prefill of some prompt pieces, a graphed whole-prompt prefill, a decode step, a
cache-row copy), rank 0 writes what the call takes (rows, positions, lengths: a few int64s) into
a pipe to each rank, and the token ids it reads go by a broadcast over the ranks' own group
(NCCL on CUDA, from device memory, so a look-ahead step's sampled tokens are never read back
for it). Every rank then runs the same call; its two all-reduces per layer keep the ranks in
step, and every rank ends with the same logits (replicated output layer). Only rank 0 samples,
so requests, their sampling state and penalties exist on rank 0 alone.

The engines on every rank are built alike and fail alike (a prompt too long for memory, say):
a rank that meets an error in a call logs it and takes the next one, as rank 0 fails that
request and goes on.

A rank process that ends while the engine runs (killed, out of memory) makes every request fail
with a `RankLost` naming it, and new ones refused: the engine cannot go on with a slice missing.
Collectives time out after `COLLECTIVE_TIMEOUT` (NCCL's watchdog then ends the process), so a
rank that hangs does not hang the server for ever. The other ranks end when rank 0 closes the
engine, or when its process ends (their pipe closes), however it ends; they ignore SIGINT, which
a terminal's Ctrl-C sends to the whole process group, and leave the shutdown to rank 0.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import multiprocessing.connection
import multiprocessing.process
import signal
import threading
import traceback
from array import array
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from kbqa.chatglm.batched import DecodeStep
from kbqa.chatglm.batching import BatchEngine, Request
from kbqa.chatglm.forward import Forward, Segment
from kbqa.chatglm.model import ChatGLM2Model
from kbqa.chatglm.prefill_graphs import PrefillGraphs
from kbqa.chatglm.tensor_parallel import ParallelModel, join_group, shard

log = logging.getLogger("kbqa.chatglm")

T = TypeVar("T")
Connection = multiprocessing.connection.Connection

COLLECTIVE_TIMEOUT = timedelta(seconds=120)
"""A collective that waits longer fails: far above a step's time (an 8k prefill of chatglm2-6b
is about a second), but it covers the first use of a shape, when each rank compiles its
kernels and captures its CUDA graphs at its own pace."""
START_TIMEOUT_S = 1800.0
"""How long the ranks may take to load and shard the model (a 6B checkpoint from a slow disk)."""
STOP_WAIT_S = 10.0
"""How long a rank has to leave after rank 0 told it to stop, before it is ended."""
READY = "ready"
"""The first word of a rank's report once it can follow (anything else is its traceback)."""


class Op(enum.IntEnum):
    """What rank 0 tells the other ranks, with its words (int64s) after it."""

    STOP = 0
    PREFILL = 1  # n, then (start, row, logits, length) of n segments; their ids broadcast
    GRAPH_PREFILL = 2  # row, length; the prompt's ids broadcast
    DECODE = 3  # n, n tokens, n positions
    DECODE_SAMPLED = 4  # n, n positions; the tokens (on the device) broadcast
    COPY_ROW = 5  # src, dst, length


class RankLost(RuntimeError):
    """A tensor-parallel rank process ended while the engine needed it."""


def _words(message: bytes) -> list[int]:
    words = array("q")
    words.frombytes(message)
    return words.tolist()


class Followers:
    """Rank 0's side of ranks 1..N-1: their processes and a pipe to each. `tell` sends one
    model call to all of them; a thread watches that none ends while the engine runs."""

    def __init__(
        self,
        processes: Sequence[multiprocessing.process.BaseProcess],
        pipes: Sequence[Connection],
    ) -> None:
        self.processes = list(processes)
        self.pipes = list(pipes)
        self.lost: RankLost | None = None
        self.on_lost: Callable[[RankLost], None] | None = None
        self._stopping = threading.Event()
        self._checking = threading.Lock()
        self._watch = threading.Thread(target=self._watch_ranks, name="kbqa-tp-watch", daemon=True)
        self._watch.start()

    def tell(self, op: Op, words: Sequence[int] = (), payload: Tensor | None = None) -> None:
        """Have every rank run `op`; payload (token ids on the device) follows by broadcast."""
        if self.lost is not None:
            raise self.lost
        message = array("q", [int(op), *words]).tobytes()
        try:
            for pipe in self.pipes:
                pipe.send_bytes(message)
        except OSError as e:  # a closed pipe: its rank is gone
            raise self._lost_or(e) from e
        if payload is not None:
            self.guard(lambda: dist.broadcast(payload.contiguous(), 0))

    def guard(self, run: Callable[[], T]) -> T:
        """run(); where it fails because a rank has ended (a collective with a dead peer), the
        failure is a RankLost that says which."""
        try:
            return run()
        except RankLost:
            raise
        except Exception as e:
            raise self._lost_or(e) from e

    def _lost_or(self, error: Exception, wait_s: float = 2.0) -> Exception:
        """A RankLost if a rank has ended (waiting briefly: the peer's socket closes before its
        process is reaped), else `error`."""
        multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=wait_s)
        return self._check() or error

    def _check(self) -> RankLost | None:
        # One thread at a time (the watcher and a failed collective both get here): two reaping
        # the same process at once, the loser's waitpid fails and it would see no exit status.
        with self._checking:
            return self._check_locked()

    def _check_locked(self) -> RankLost | None:
        if self.lost is None:
            dead = [(rank, code) for rank, code in ended(self.processes) if code is not None]
            if dead:
                which = ", ".join(f"rank {rank} (exit status {code})" for rank, code in dead)
                self.lost = RankLost(
                    f"tensor-parallel {which} ended; the model cannot run without its slice "
                    "(restart the server)"
                )
        return self.lost

    def _watch_ranks(self) -> None:
        sentinels = [p.sentinel for p in self.processes]
        multiprocessing.connection.wait(sentinels)
        if self._stopping.is_set():
            return
        lost = self._check()
        if lost is not None:
            log.error("%s", lost)
            if self.on_lost is not None:
                self.on_lost(lost)

    def stop(self) -> None:
        """Tell the ranks to stop and wait for them (ending those that do not)."""
        self._stopping.set()
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # already gone
                pipe.send_bytes(array("q", [int(Op.STOP)]).tobytes())
            pipe.close()
        end_processes(self.processes, STOP_WAIT_S)


def ended(processes: Sequence[multiprocessing.process.BaseProcess]) -> list[tuple[int, int | None]]:
    """(rank, exit status) of the rank processes that have ended (ranks from 1). A process's
    sentinel is ready as soon as its files close, before the kernel has its exit status:
    joining it waits for that (exitcode alone could still say it runs)."""
    ready = set(multiprocessing.connection.wait([p.sentinel for p in processes], timeout=0))
    for process in processes:
        if process.sentinel in ready:
            process.join(timeout=STOP_WAIT_S)
    return [(rank, p.exitcode) for rank, p in enumerate(processes, start=1) if p.sentinel in ready]


def end_processes(processes: Sequence[multiprocessing.process.BaseProcess], wait_s: float) -> None:
    for process in processes:
        process.join(timeout=wait_s)
        if process.is_alive():
            process.terminate()
            process.join(timeout=wait_s)
        if process.is_alive():
            process.kill()
            process.join()


class _ToldDecodeStep(DecodeStep):
    """Rank 0's decode step: the other ranks run each step too."""

    def __init__(
        self, model: ChatGLM2Model, forward: Forward, cuda_graphs: bool, followers: Followers
    ) -> None:
        super().__init__(model, forward, cuda_graphs)
        self.followers = followers

    def __call__(self, tokens: list[int] | Tensor, positions: list[int]) -> Tensor:
        n = len(positions)
        if isinstance(tokens, Tensor):
            self.followers.tell(Op.DECODE_SAMPLED, [n, *positions], tokens.view(-1))
        else:
            self.followers.tell(Op.DECODE, [n, *tokens, *positions])
        step = super().__call__
        return self.followers.guard(lambda: step(tokens, positions))


class _ToldPrefillGraphs(PrefillGraphs):
    """Rank 0's graphed prefills: the other ranks run each prompt through theirs too."""

    def __init__(self, forward: Forward, max_tokens: int, followers: Followers) -> None:
        super().__init__(forward, max_tokens=max_tokens)
        self.followers = followers

    def __call__(self, prompt: Tensor, row: int) -> Tensor | None:
        self.followers.tell(Op.GRAPH_PREFILL, [row, prompt.numel()], prompt)
        prefill = super().__call__
        return self.followers.guard(lambda: prefill(prompt, row))


class ParallelBatchEngine(BatchEngine):
    """Rank 0's BatchEngine over its slice of a tensor-parallel model (see the module
    docstring); built by `start`, which has started the other ranks. `close()` stops them."""

    def __init__(self, model: ChatGLM2Model, followers: Followers, **options: Any) -> None:
        super().__init__(model, **options)
        self.followers = followers
        self.prefiller = self._prefill_told
        self.decoder = _ToldDecodeStep(model, self.forward, self.decoder.cuda_graphs, followers)
        if self.prefill_graphs is not None:
            max_tokens = self.prefill_graphs.max_tokens
            self.prefill_graphs = _ToldPrefillGraphs(self.forward, max_tokens, followers)
        followers.on_lost = self._fail_everything

    def submit(self, prompt: Sequence[int], **options: Any) -> Request:
        if self.followers.lost is not None:
            raise self.followers.lost
        return super().submit(prompt, **options)

    @property
    def ready(self) -> bool:
        return super().ready and self.followers.lost is None

    def close(self) -> None:
        """Stop the loop, cancel what is left, stop the other ranks and leave the group."""
        lost = self.followers.lost
        if lost is None:
            super().close()
        else:
            # The loop may wait in a collective that a dead rank never joins: fail what is
            # left without joining it for ever (gloo raises at once; NCCL after its timeout).
            with self._wake:
                self._closed = True
                self._wake.notify()
            self._fail_everything(lost)
            if self._thread is not None:
                self._thread.join(timeout=STOP_WAIT_S)
        self.followers.stop()
        if dist.is_initialized() and (self._thread is None or not self._thread.is_alive()):
            dist.destroy_process_group()

    def _fail_everything(self, error: BaseException) -> None:
        for seq in [*self._running, *self._prefilling]:
            seq.request._finish("error", error)
        with self._wake:
            while self._waiting:
                self._waiting.popleft()._finish("error", error)

    def _prefill_told(self, segments: Sequence[Segment]) -> Tensor | None:
        words = [len(segments)]
        for s in segments:
            words += [s.start, s.row, int(s.logits), s.ids.numel()]
        ids = torch.cat([s.ids for s in segments])  # [T]
        self.followers.tell(Op.PREFILL, words, ids)
        return self.followers.guard(lambda: self.forward(segments))

    def _copy_row(self, src: int, dst: int, length: int) -> None:
        self.followers.tell(Op.COPY_ROW, [src, dst, length])
        super()._copy_row(src, dst, length)


# -- ranks 1..N-1 ----------------------------------------------------------------------------


def follow(engine: BatchEngine, pipe: Connection) -> bool:
    """Run rank 0's model calls on this rank's engine, in order, until told to stop (True) or
    rank 0's end closes the pipe (False)."""
    device = engine.model.device
    with torch.no_grad():
        while True:
            try:
                words = _words(pipe.recv_bytes())
            except EOFError:
                return False
            op, args = Op(words[0]), words[1:]
            if op is Op.STOP:
                return True
            payload = _receive_payload(op, args, device)
            try:
                _run(engine, op, args, payload)
            except Exception:  # rank 0 met the same error in the same call and went on
                log.exception("tensor-parallel call %s failed", op.name)


def _receive_payload(op: Op, args: list[int], device: torch.device) -> Tensor | None:
    """The token ids rank 0 broadcasts after the words of `op`, if it has any."""
    if op is Op.PREFILL:
        n = args[0]
        length = sum(args[4 + 4 * i] for i in range(n))  # [T]
    elif op is Op.GRAPH_PREFILL:
        length = args[1]
    elif op is Op.DECODE_SAMPLED:
        length = args[0]
    else:
        return None
    ids = torch.empty(length, dtype=torch.long, device=device)
    dist.broadcast(ids, 0)
    return ids


def _run(engine: BatchEngine, op: Op, args: list[int], payload: Tensor | None) -> None:
    if op is Op.PREFILL:
        assert payload is not None
        segments, offset = [], 0
        for i in range(args[0]):
            start, row, logits, length = args[1 + 4 * i : 5 + 4 * i]
            ids = payload[offset : offset + length]
            segments.append(Segment(ids, start, row, bool(logits)))
            offset += length
        engine.prefiller(segments)
    elif op is Op.GRAPH_PREFILL:
        assert payload is not None and engine.prefill_graphs is not None
        engine.prefill_graphs(payload, args[0])
    elif op is Op.DECODE:
        n = args[0]
        engine.decoder(args[1 : 1 + n], args[1 + n : 1 + 2 * n])
    elif op is Op.DECODE_SAMPLED:
        assert payload is not None
        engine.decoder(payload, args[1:])
    elif op is Op.COPY_ROW:
        src, dst, length = args
        engine.cache.move(src, dst, length)


def _rank_main(
    rank: int,
    world: int,
    backend: str,
    port: int,
    spec: ParallelModel,
    options: dict[str, Any],
    pipe: Connection,
) -> None:
    """A rank process: join the group, build this rank's slice and engine, say so, follow."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; rank 0 stops us
    try:
        device = join_group(rank, world, backend, port, COLLECTIVE_TIMEOUT)
        model = spec.build(device)
        shard(model, rank, world)
        engine = BatchEngine(model, **options)  # never started: rank 0 schedules
    except BaseException:
        pipe.send_bytes(traceback.format_exc().encode())
        return
    pipe.send_bytes(f"{READY} {device} {_memory(engine)}".encode())
    if follow(engine, pipe):
        dist.destroy_process_group()
    # else rank 0 is gone: leaving the group would wait for it


def _memory(engine: BatchEngine) -> str:
    """A rank's bytes on its device: its slice of the weights and its KV cache, in GiB."""
    weights = sum(t.numel() * t.element_size() for t in engine.model.state_dict().values())
    return f"{weights / 2**30:.2f} GiB weights + {engine.cache.nbytes / 2**30:.2f} GiB KV cache"


# -- rank 0 ----------------------------------------------------------------------------------


def start(
    model: ChatGLM2Model,
    spec: ParallelModel,
    world: int,
    *,
    backend: str | None = None,
    **options: Any,
) -> ParallelBatchEngine:
    """Rank 0's engine over `model` (loaded by the caller on its device, sharded here) and
    `world - 1` rank processes that build theirs from `spec` (rank r on cuda:r with NCCL, or
    on the CPU with gloo). options: BatchEngine's. The engine is not started; close() it.
    Raises RuntimeError, with the rank's traceback, when a rank cannot start."""
    if world < 2:
        raise ValueError(f"tensor parallelism needs at least 2 ranks, got {world}")
    if backend is None:
        backend = "nccl" if model.device.type == "cuda" else "gloo"
    if backend == "nccl":
        if torch.cuda.device_count() < world:
            raise ValueError(f"{world} ranks need {world} GPUs; {torch.cuda.device_count()} seen")
        if model.device != torch.device("cuda", 0):
            raise ValueError(f"rank 0's model must be on cuda:0, not {model.device}")
    # Checked here, before any process starts: the same check fails alike on every rank.
    shard(model, 0, world)
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    context = mp.get_context("spawn")
    processes, pipes = [], []
    for rank in range(1, world):
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_rank_main,
            args=(rank, world, backend, store.port, spec, options, theirs),
            name=f"kbqa-tp-rank{rank}",
            daemon=True,
        )
        process.start()
        theirs.close()
        processes.append(process)
        pipes.append(ours)
    try:
        _while_alive(
            processes, lambda: join_group(0, world, backend, store.port, COLLECTIVE_TIMEOUT, store)
        )
        reports = _wait_ready(processes, pipes)
    except BaseException:
        end_processes(processes, 0)
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    engine = ParallelBatchEngine(model, Followers(processes, pipes), **options)
    reports.insert(0, f"{model.device} {_memory(engine)}")
    ranks = "; ".join(f"rank {rank} on {report}" for rank, report in enumerate(reports))
    log.info("ChatGLM2 over %d tensor-parallel ranks (%s): %s", world, backend, ranks)
    return engine


def _while_alive(
    processes: Sequence[multiprocessing.process.BaseProcess], run: Callable[[], Any]
) -> None:
    """run() on a thread while watching the rank processes: one that ends first (it could not
    start) raises here rather than leave run() waiting for it."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=1.0)
        dead = [p for p in processes if p.exitcode is not None]
        if dead and thread.is_alive():
            raise RuntimeError(
                f"tensor-parallel rank process {dead[0].name} ended (exit status "
                f"{dead[0].exitcode}) before joining the group"
            )
    if failure:
        raise failure[0]


def _wait_ready(
    processes: Sequence[multiprocessing.process.BaseProcess], pipes: Sequence[Connection]
) -> list[str]:
    """Wait for every rank's report: READY with its device and memory, else its traceback.
    Returns the devices and memory of ranks 1..N-1."""
    found: dict[int, str] = {}
    waiting = dict(zip(pipes, range(1, len(pipes) + 1), strict=True))
    sentinels = [p.sentinel for p in processes]
    while waiting:
        ready = multiprocessing.connection.wait([*waiting, *sentinels], timeout=START_TIMEOUT_S)
        if not ready:
            raise TimeoutError(f"tensor-parallel ranks not ready after {START_TIMEOUT_S:.0f} s")
        for pipe in [item for item in ready if item in waiting]:
            rank = waiting.pop(pipe)
            try:
                report = pipe.recv_bytes().decode()
            except EOFError:
                report = "ended without a report"
            if not report.startswith(f"{READY} "):
                raise RuntimeError(f"tensor-parallel rank {rank} failed:\n{report}")
            found[rank] = report.removeprefix(f"{READY} ")
        for rank, code in ended(processes):
            raise RuntimeError(f"tensor-parallel rank {rank} ended (exit status {code})")
    return [found[rank] for rank in sorted(found)]
