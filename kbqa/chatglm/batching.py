"""Continuous batching: concurrent generations share every forward pass of one model.

A `BatchEngine` owns a `SlotCache` of max_batch rows × max_seq positions (its memory bound)
and a loop, on a background thread, that repeats one step:

1. cancelled requests leave; waiting requests take the free rows (oldest first);
2. the requests in prefill run up to `prefill_chunk` of their prompt tokens while others
   decode, so that those streams keep flowing (`max_prefill_tokens` when none does), oldest
   first and in one pass of the fast forward; on CUDA a whole prompt of up to 2,048 tokens is
   one prefill graph replay instead, never cut (running streams pause once for its GPU time,
   ~30 ms at 1.6k tokens on an H100, not for several launch-bound chunks); a request whose
   prompt is done samples its first token and joins the decoding rows. A newcomer whose
   prompt begins with at least `REUSED_PREFIX_MIN` tokens of a prompt already in the cache
   (the same instructions and retrieved passages before a different question, as when many
   users ask over the same documents) copies those positions from that row and prefills only
   the rest;
3. all decoding rows run one token together (`DecodeStep`), each samples with its own
   settings, and finished ones leave. On CUDA the next step is queued on the sampled tokens
   before they are read back (`look_ahead`), so the device does not wait for this thread.

Decoding sequences occupy cache rows 0..n-1 (row i is batch element i): one that leaves is
replaced by the last, whose cache row is copied over, so a step attends over a contiguous
block of rows. Waiting requests are served in FIFO order; admission control (refusing when
too many wait) belongs to the caller.

Each `Request` is a thread-safe token stream: iterate it from any thread, or pass `on_token`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kbqa.chatglm.batched import DecodeStep
from kbqa.chatglm.forward import Forward, Segment, SlotCache
from kbqa.chatglm.model import ChatGLM2Model
from kbqa.chatglm.prefill_graphs import MAX_TOKENS as GRAPHED_PROMPT_TOKENS
from kbqa.chatglm.prefill_graphs import PrefillGraphs
from kbqa.chatglm.sampling import SamplingParams, sample_rows

log = logging.getLogger("kbqa.chatglm")

REUSED_PREFIX_MIN = 256
"""Shortest shared prompt prefix copied from another row rather than prefilled: a copy reads
and writes the prefix's keys and values once (~30 MB per 1,000 tokens for ChatGLM2-6B), while
the rest of the prompt then runs eagerly rather than as a whole-prompt graph replay."""

FinishReason = Literal["stop", "length", "cancelled", "error"]
Cancel = threading.Event | Callable[[], bool]


class Request:
    """One submitted generation: iterate it for the new token ids (one consumer).

    Ends on a stop id (not yielded; reason "stop"), after max_new_tokens ("length"), when
    cancelled ("cancelled"), or on an engine error, which iteration re-raises ("error").
    Leaving an iteration early cancels the request.
    """

    def __init__(
        self,
        prompt: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        stop_ids: frozenset[int],
        cancel: Cancel | None,
        on_token: Callable[[int], None] | None,
    ) -> None:
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.params = params
        self.stop_ids = stop_ids
        self.tokens: list[int] = []
        self.token_times: list[float] = []  # time.perf_counter() at which each token came out
        self.submitted_at = time.perf_counter()
        self.finish_reason: FinishReason | None = None
        self.error: BaseException | None = None
        # The caller's cancel as a check: an Event's is_set, or the callable itself.
        self._user_cancel = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        self._on_token = on_token
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._items: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        if self._cancel.is_set():
            return True
        if self._user_cancel is None:
            return False
        try:
            return bool(self._user_cancel())
        except Exception:  # the caller's bug, on the engine thread: end this request only
            log.exception("a request's cancel check failed; cancelling it")
            return True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __iter__(self) -> Iterator[int]:
        try:
            while (item := self._items.get()) is not None:
                yield item
        finally:
            if not self.done:
                self.cancel()  # the consumer stopped listening
        if self.error is not None:
            raise self.error

    def result(self, timeout: float | None = None) -> list[int]:
        """Wait for the end and return all new tokens (re-raises an engine error)."""
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return list(self.tokens)

    # -- called by the engine thread --

    def _emit(self, token: int) -> None:
        self.tokens.append(token)
        self.token_times.append(time.perf_counter())
        self._items.put(token)
        if self._on_token is not None:
            try:
                self._on_token(token)
            except Exception as e:  # the caller's bug, on the engine thread: end this request
                log.exception("a request's on_token callback failed")
                self._finish("error", e)

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.finish_reason = reason
        self.error = error
        self._items.put(None)
        self._done.set()


@dataclass
class _Seq:
    """A request holding a cache row: prefilling (done < prompt length) or decoding."""

    request: Request
    row: int
    generator: torch.Generator | None
    done: int = 0  # prompt tokens in the cache
    length: int = 0  # positions in the cache (prompt, then fed-back tokens)
    next_token: int = 0  # sampled, not yet in the cache


@dataclass
class EngineStats:
    steps: int = 0
    decode_steps: int = 0
    prefill_tokens: int = 0
    max_running: int = 0
    row_swaps: int = 0  # a finished prompt took its row from a younger one still prefilling
    graph_prefills: int = 0  # whole prompts prefilled by a graph replay
    steps_ahead: int = 0  # decode steps queued before the last one's tokens were read, and used
    reused_prefix_tokens: int = 0  # prompt tokens copied from another row instead of prefilled


class BatchEngine:
    """Continuous batching over one ChatGLM2. `start()` runs the loop on a thread (or drive it
    with `step()`); `close()` stops it and cancels what is left. Use one engine per model."""

    def __init__(
        self,
        model: ChatGLM2Model,
        *,
        max_batch: int = 16,
        max_seq: int = 2048,
        prefill_chunk: int = 512,
        max_prefill_tokens: int = 4096,
        cuda_graphs: bool | None = None,
        warm_up: bool = False,
        look_ahead: bool | None = None,
    ) -> None:
        if prefill_chunk < 1 or max_prefill_tokens < prefill_chunk:
            raise ValueError(
                "need 1 <= prefill_chunk <= max_prefill_tokens, got "
                f"{prefill_chunk}, {max_prefill_tokens}"
            )
        self.model = model
        self.max_batch = max_batch
        self.max_seq = max_seq
        self.prefill_chunk = prefill_chunk
        self.max_prefill_tokens = max_prefill_tokens
        self.cache = SlotCache(model, max_batch, max_seq)
        self.forward = Forward(model, self.cache)
        self.decoder = DecodeStep(model, self.forward, cuda_graphs)
        self.prefiller: Callable[[Sequence[Segment]], Tensor | None] = self.forward
        self.prefill_graphs: PrefillGraphs | None = None
        """Whole prompts of up to 2,048 tokens (and max_prefill_tokens) as one CUDA graph
        replay each, where the decode step runs graphs (prefill_graphs.py)."""
        if self.decoder.cuda_graphs:
            limit = min(GRAPHED_PROMPT_TOKENS, max_prefill_tokens)
            self.prefill_graphs = PrefillGraphs(self.prefiller, max_tokens=limit)
        self.warm_up_on_start = warm_up
        self.look_ahead = self.decoder.cuda_graphs if look_ahead is None else look_ahead
        """Queue each decode step before the last one's tokens are read back (see _decode)."""
        self._ahead: tuple[list[_Seq], Tensor] | None = None  # (rows' sequences, their logits)
        on_cuda = model.device.type == "cuda"
        self._host_tokens = torch.empty(max_batch, dtype=torch.long, pin_memory=on_cuda)
        self._ready = threading.Event()
        if not warm_up:
            self._ready.set()
        self.stats = EngineStats()
        self._waiting: deque[Request] = deque()
        self._wake = threading.Condition()
        self._running: list[_Seq] = []  # _running[i].row == i
        self._prefilling: list[_Seq] = []  # in admission order, rows >= len(_running)
        self._seen: Tensor | None = None  # [max_batch, V] bool, for repetition penalties
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the public side (any thread) --

    def submit(
        self,
        prompt: Sequence[int],
        *,
        max_new_tokens: int = 256,
        params: SamplingParams | None = None,
        stop_ids: Iterable[int] | None = None,
        cancel: Cancel | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> Request:
        """Queue a generation. stop_ids defaults to the config's eos; max_new_tokens is capped
        by max_seq. Raises ValueError for a prompt that cannot fit. on_token and a callable
        cancel run on the engine thread; one that raises ends only its own request."""
        ids = [int(i) for i in prompt]
        vocab = self.model.config.padded_vocab_size
        if not ids:
            raise ValueError("the prompt is empty")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab})")
        if len(ids) >= self.max_seq:
            raise ValueError(
                f"prompt of {len(ids)} tokens leaves no room in the engine's max_seq {self.max_seq}"
            )
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        stops = frozenset(stop_ids if stop_ids is not None else [self.model.config.eos_token_id])
        request = Request(
            ids,
            min(max_new_tokens, self.max_seq - len(ids)),
            params or SamplingParams(),
            stops,
            cancel,
            on_token,
        )
        if request.max_new_tokens == 0:
            request._finish("length")
            return request
        with self._wake:
            if self._closed:
                raise RuntimeError("the batching engine is closed")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def start(self) -> BatchEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kbqa-batching", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the loop (after its current step) and cancel every unfinished request."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for seq in [*self._running, *self._prefilling]:
            seq.request._finish("cancelled")
        self._running, self._prefilling = [], []
        with self._wake:
            while self._waiting:
                self._waiting.popleft()._finish("cancelled")

    def __enter__(self) -> BatchEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._prefilling)

    # -- the engine thread --

    @property
    def ready(self) -> bool:
        """False while the engine's thread warms up (requests submitted meanwhile wait)."""
        return self._ready.is_set()

    def warm_up(self) -> None:
        """Run, before any request, what serving would otherwise do inside its first request's
        latency: the thread's first cuBLAS call, Triton's compiles for a prefill and a decode
        step, and the capture of the smallest decode graph. Other shapes (batch and key
        buckets, padded prompt lengths) are captured when first used, so that a server is
        ready in seconds. Writes only into cache rows that no request holds yet."""
        if self._running or self._prefilling:
            raise RuntimeError("warm up before the engine takes requests")
        vocab = self.model.config.padded_vocab_size
        first = min(37, self.max_seq - 1)
        ids = (torch.arange(first, device=self.model.device) + 1) % vocab
        with torch.no_grad():
            self.prefiller([Segment(ids, 0, self.max_batch - 1, logits=True)])
            self.decoder([1], [first])
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def _loop(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.set_device(self.model.device)
        if self.warm_up_on_start:
            try:
                self.warm_up()
            except Exception:  # serving still works, only its first requests are slower
                log.exception("batching engine warm-up failed")
            finally:
                self._ready.set()
        while True:
            with self._wake:
                while not self._closed and not self._has_work():
                    self._wake.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception as e:  # a bug, not a request's fault: fail what runs, go on
                log.exception("batching step failed")
                self._fail_all(e)

    def _fail_all(self, error: Exception) -> None:
        for seq in [*self._running, *self._prefilling]:
            seq.request._finish("error", error)
        self._running, self._prefilling = [], []

    def _has_work(self) -> bool:
        return bool(self._waiting or self._running or self._prefilling)

    def step(self) -> bool:
        """One scheduling step; False when there was nothing to do."""
        self._drop_cancelled()
        self._admit()
        if not self._prefilling and not self._running:
            return False
        self.stats.steps += 1
        with torch.no_grad():
            if self._prefilling:
                self._prefill()
            if self._running:
                try:
                    self._decode()
                except Exception as e:
                    log.exception("decode step failed")
                    for seq in self._running:
                        seq.request._finish("error", e)
                    self._running, self._ahead = [], None
        return True

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._prefilling if s.request.cancelled]:
            seq.request._finish("cancelled")
            self._prefilling.remove(seq)
        gone = [s for s in self._running if s.request.cancelled]
        for seq in gone:
            seq.request._finish("cancelled")
        if gone:
            self._retire(gone)
        with self._wake:
            if any(r.cancelled for r in self._waiting):
                for r in [r for r in self._waiting if r.cancelled]:
                    self._waiting.remove(r)
                    r._finish("cancelled")

    def _admit(self) -> None:
        """Waiting requests take the free rows, oldest first. Rows 0..n-1 are the decoding
        sequences', so a free row is always past them."""
        taken = {s.row for s in self._running} | {s.row for s in self._prefilling}
        while len(taken) < self.max_batch:
            with self._wake:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
            row = min(set(range(self.max_batch)) - taken)
            taken.add(row)
            generator = request.params.generator(self.model.device)
            self._prefilling.append(_Seq(request, row, generator))

    def _prefill(self) -> None:
        """Run the next prompt pieces of the prefilling sequences (oldest first, within this
        step's token budget): whole prompts that fit the prefill graphs one replay each, the
        other pieces together in one eager pass. Those whose prompt is done start decoding."""
        self._reuse_prefixes()
        pieces = self._plan_prefill()
        logits: dict[int, Tensor] = {}  # id(seq) → its last position's logits [V]
        eager: list[tuple[_Seq, int]] = []
        for seq, n in pieces:
            try:
                graphed = self._prefill_graphed(seq, n)
            except Exception as e:  # after the replay (copying the row, say): this one fails
                log.exception("prefill failed")
                self._fail_prefill(seq, e)
                continue
            if graphed is None:
                eager.append((seq, n))
            else:
                logits[id(seq)] = graphed
        if eager:
            self._prefill_eager(eager, logits)
        # Book every piece before any sequence starts decoding: one that starts decoding may
        # swap rows with one still prefilling, and the swap copies what that one has.
        live = {id(seq) for seq in self._prefilling}  # those that did not fail
        for seq, n in pieces:
            if id(seq) in live:
                self._prefilled(seq, n)
        finished = [seq for seq in self._prefilling if seq.done == len(seq.request.prompt)]
        for seq in finished:
            self._start_decoding(seq, logits[id(seq)])

    def _reuse_prefixes(self) -> None:
        """Newcomers that have prefilled nothing copy the longest prompt prefix they share
        with a row whose prompt is (partly) in the cache, where it is long enough."""
        donors = [s for s in self._running + self._prefilling if s.done >= REUSED_PREFIX_MIN]
        for seq in self._prefilling:
            if seq.done or not donors:
                continue
            prompt = seq.request.prompt
            best, length = None, 0
            for donor in donors:
                shared = _shared_prefix(prompt, donor.request.prompt, donor.done)
                if shared > length:
                    best, length = donor, shared
            length = min(length, len(prompt) - 1)  # the last token's logits are wanted
            if best is None or length < REUSED_PREFIX_MIN:
                continue
            self._copy_row(best.row, seq.row, length)
            seq.done = seq.length = length
            self.stats.reused_prefix_tokens += length

    def _plan_prefill(self) -> list[tuple[_Seq, int]]:
        """(sequence, prompt tokens it runs this step), oldest first. The budget is
        prefill_chunk tokens while others decode, max_prefill_tokens otherwise; a whole
        prompt that fits the graphs is never cut (the first may exceed the budget)."""
        budget = self.prefill_chunk if self._running else self.max_prefill_tokens
        pieces: list[tuple[_Seq, int]] = []
        for seq in self._prefilling:
            left = len(seq.request.prompt) - seq.done
            if self._graphable(seq, left):
                if pieces and left > budget:
                    break
                n = left
            else:
                n = min(left, budget)
            if n <= 0:
                break
            budget -= n
            pieces.append((seq, n))
        return pieces

    def _graphable(self, seq: _Seq, n: int) -> bool:
        graphs = self.prefill_graphs
        whole = seq.done == 0 and n == len(seq.request.prompt)
        return whole and graphs is not None and graphs.fits(n)

    def _prefill_graphed(self, seq: _Seq, n: int) -> Tensor | None:
        if self.prefill_graphs is None or not self._graphable(seq, n):
            return None
        logits = self.prefill_graphs(self._segment(seq, n).ids, seq.row)
        if logits is not None:
            self.stats.graph_prefills += 1
        return logits

    def _prefill_eager(self, pieces: list[tuple[_Seq, int]], logits: dict[int, Tensor]) -> None:
        """All pieces in one pass; the logits of those that finish their prompt go into
        `logits`. When the pass fails (too long for memory, say), each piece runs on its own,
        so that only the requests that fail alone fail. Rerunning rewrites the same slots."""
        try:
            out = self.prefiller([self._segment(seq, n) for seq, n in pieces])
        except Exception as error:
            if len(pieces) == 1:
                log.exception("prefill failed")
                self._fail_prefill(pieces[0][0], error)
                return
            log.warning("batched prefill failed; retrying its %d pieces one by one", len(pieces))
            for seq, n in pieces:
                try:
                    one = self.prefiller([self._segment(seq, n)])
                except Exception as e:
                    log.exception("prefill failed")
                    self._fail_prefill(seq, e)
                    continue
                if one is not None:
                    logits[id(seq)] = one[0]
            return
        ending = [seq for seq, n in pieces if seq.done + n == len(seq.request.prompt)]
        for i, seq in enumerate(ending):
            assert out is not None
            logits[id(seq)] = out[i]

    def _segment(self, seq: _Seq, n: int) -> Segment:
        prompt = seq.request.prompt
        ids = torch.tensor(prompt[seq.done : seq.done + n], device=self.model.device)
        return Segment(ids, seq.done, seq.row, logits=seq.done + n == len(prompt))

    def _prefilled(self, seq: _Seq, n: int) -> None:
        seq.done += n
        seq.length = seq.done
        self.stats.prefill_tokens += n

    def _fail_prefill(self, seq: _Seq, error: BaseException) -> None:
        self._prefilling.remove(seq)
        seq.request._finish("error", error)

    def _start_decoding(self, seq: _Seq, logits: Tensor) -> None:
        """seq's prompt is in the cache and logits [V] are its last position's: sample its
        first token and move it to the decoding rows."""
        prompt = seq.request.prompt
        try:
            if seq.request.params.repetition_penalty != 1.0:
                seen = self._seen_rows()
                seen[seq.row] = False
                seen[seq.row, torch.tensor(prompt, device=seen.device)] = True
            seen_row = self._seen[seq.row : seq.row + 1] if self._seen is not None else None
            params, generator = [seq.request.params], [seq.generator]
            token = int(sample_rows(logits.unsqueeze(0), params, seen_row, generator)[0])
        except Exception as e:  # memory, say: this request fails, the others go on
            log.exception("sampling the first token failed")
            self._fail_prefill(seq, e)
            return
        self._prefilling.remove(seq)
        if not self._accept(seq, token):
            return
        row = len(self._running)
        if seq.row != row:  # decoders left while it prefilled: move it next to them
            holder = next((s for s in self._prefilling if s.row == row), None)
            if holder is not None:  # a younger prompt holds that row: they swap rows
                scratch = self.cache.scratch
                self._copy_row(holder.row, scratch, holder.length)
                vacated = seq.row
                self._move(seq, row)
                self._copy_row(scratch, vacated, holder.length)
                holder.row = vacated
                self.stats.row_swaps += 1
            else:
                self._move(seq, row)
        self._running.append(seq)
        self.stats.max_running = max(self.stats.max_running, len(self._running))

    def _decode(self) -> None:
        seqs = self._running
        ahead, self._ahead = self._ahead, None
        same = ahead is not None and len(ahead[0]) == len(seqs)
        if ahead is not None and same and all(a is b for a, b in zip(ahead[0], seqs, strict=True)):
            logits = ahead[1]  # queued by the last step for these very rows
            self.stats.steps_ahead += 1
        else:
            logits = self.decoder([s.next_token for s in seqs], [s.length for s in seqs])
        params = [s.request.params for s in seqs]
        seen = self._seen[: len(seqs)] if self._seen is not None else None
        tokens = sample_rows(logits, params, seen, [s.generator for s in seqs])  # [n]
        self.stats.decode_steps += 1
        n = len(seqs)
        last = any(len(s.request.tokens) + 1 >= s.request.max_new_tokens for s in seqs)
        if self.look_ahead and not last:
            # The next step is queued on the sampled tokens, still on the device, before they
            # are read back (as generate.py does), so the device runs while this thread hands
            # tokens out. It counts only if the same rows decode next; if any leaves or joins,
            # it is dropped, having written only what a step of the remaining rows writes
            # again (their next keys) or what nobody reads (a leaving row's).
            self._host_tokens[:n].copy_(tokens, non_blocking=True)
            copied = torch.cuda.Event() if tokens.is_cuda else None
            if copied is not None:
                copied.record()
            self._ahead = (list(seqs), self.decoder(tokens, [s.length + 1 for s in seqs]))
            if copied is not None:
                copied.synchronize()
            values = self._host_tokens[:n].tolist()
        else:
            values = tokens.tolist()
        for seq in seqs:
            seq.length += 1  # next_token is now in the cache
        finished = [s for s, t in zip(seqs, values, strict=True) if not self._accept(s, t)]
        if finished:
            self._retire(finished)

    def _accept(self, seq: _Seq, token: int) -> bool:
        """Hand a sampled token to its request; False when the request is now finished."""
        request = seq.request
        if token in request.stop_ids:
            request._finish("stop")
            return False
        request._emit(token)
        if request.done:  # its on_token callback failed
            return False
        seq.next_token = token
        if len(request.tokens) >= request.max_new_tokens:
            request._finish("length")
            return False
        if request.params.repetition_penalty != 1.0:
            self._seen_rows()[seq.row, token] = True
        return True

    def _retire(self, leaving: list[_Seq]) -> None:
        """Remove sequences from the decoding rows, moving the last rows into the holes."""
        gone = {id(s) for s in leaving}
        survivors = [s for s in self._running if id(s) not in gone]
        n = len(survivors)
        holes = sorted(s.row for s in leaving if s.row < n)
        movers = [s for s in survivors if s.row >= n]
        for hole, seq in zip(holes, movers, strict=True):
            self._move(seq, hole)
        self._running = sorted(survivors, key=lambda s: s.row)

    def _move(self, seq: _Seq, row: int) -> None:
        self._copy_row(seq.row, row, seq.length)
        if self._seen is not None:
            self._seen[row] = self._seen[seq.row]
        seq.row = row

    def _copy_row(self, src: int, dst: int, length: int) -> None:
        """Copy a cache row for the scheduler (a tensor-parallel engine's rank 0 also has its
        other ranks copy theirs: parallel_engine.py)."""
        self.cache.move(src, dst, length)

    def _seen_rows(self) -> Tensor:
        if self._seen is None:
            vocab = self.model.config.padded_vocab_size
            self._seen = torch.zeros(
                self.max_batch, vocab, dtype=torch.bool, device=self.model.device
            )
        return self._seen


def _shared_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens a and b share, at most `limit` (slices compared by halving)."""
    low, high = 0, min(len(a), len(b), limit)
    if a[:REUSED_PREFIX_MIN] != b[:REUSED_PREFIX_MIN]:
        return 0  # the common case, decided at once
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low
