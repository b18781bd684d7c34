"""The decode step of the fast forward (forward.py) for rows 0..n-1 of a SlotCache, captured
as CUDA graphs per (batch bucket, key bucket) on CUDA so that a step costs one launch rather
than ~250; and `Graphs`, the one CUDA-graph helper (prefill_graphs.py uses it too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

from kbqa.chatglm.forward import Forward, SlotCache
from kbqa.chatglm.model import ChatGLM2Model
from kbqa.chatglm.triton_use import with_fallback

KEY_BLOCK = 256  # decode attends over a multiple of this many cache slots (fewer graphs)


def batch_bucket(n: int, limit: int) -> int:
    """Rows a decode step runs for n sequences: 1, 2, 4, 8, then multiples of 8 (≤ limit)."""
    bucket = 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8
    return min(bucket, limit)


def key_bucket(n: int, limit: int) -> int:
    """Cache slots a decode step attends over to see n of them: n rounded up to a multiple of
    KEY_BLOCK or of 1/16 of the next power of two, whichever is larger (≤ 6% waste)."""
    step = max(KEY_BLOCK, 1 << max(0, (n - 1).bit_length() - 4))
    return min(-(-n // step) * step, limit)


class Graphs:
    """CUDA graphs of a pass, one per shape key, captured on first use and replayed after, in
    one memory pool: they never run at once, so their scratch memory can overlap. With
    capture False the pass runs eagerly (the CPU tests' way)."""

    def __init__(self, capture: bool = True) -> None:
        self.capture = capture
        self._graphs: dict[Hashable, tuple[Any, Tensor]] = {}  # (CUDAGraph, its output)
        self._pool: Any = None  # the graphs' memory pool, once the first is captured

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def clear(self) -> None:
        self._graphs.clear()

    def __call__(self, key: Hashable, run: Callable[[], Tensor]) -> Tensor:
        """run()'s result: run eagerly, or the graph of `key` replayed (captured if new)."""
        if not self.capture:
            return run()
        if key not in self._graphs:
            self.add(key, run)
        graph, out = self._graphs[key]
        graph.replay()
        return out  # rewritten by every replay

    def add(self, key: Hashable, run: Callable[[], Tensor]) -> None:
        """Capture run() as the graph of `key`.

        run() is called once on a side stream first: Triton compiles, autotuning and cuBLAS
        set-up must not happen inside a capture. It must write only what the replay will write
        again (the same cache slots), so that the warm-up changes nothing.
        """
        side = _side_stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = run()
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[key] = (graph, out)


_local = threading.local()


def _side_stream() -> Any:
    """This thread's stream for the runs before captures. One, not a new one per capture:
    cuBLAS keeps a workspace (8 MiB here) per thread and stream it has run on, and the 8k
    prefill's memory goal has ~60 MB to spare (bench/RESULTS.md)."""
    device = torch.cuda.current_device()
    streams: dict[int, Any] = _local.__dict__.setdefault("streams", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream()
    return streams[device]


class DecodeStep:
    """Runs `Forward.decode` for sequences in cache rows 0..n-1, padded to a batch bucket; on
    CUDA each (batch bucket, key bucket) is captured once, on first use, and replayed after."""

    def __init__(
        self, model: ChatGLM2Model, forward: Forward, cuda_graphs: bool | None = None
    ) -> None:
        self.forward = forward
        self.cache: SlotCache = forward.cache
        # A graph is captured on one device: a model split over several runs eagerly.
        on_cuda = model.device.type == "cuda" and len({d for d, _ in model.layer_split}) < 2
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs and on_cuda
        # Static inputs that graphs read: rows are tokens, positions and write rows [3, R].
        self.inputs = torch.zeros(3, self.cache.max_batch, dtype=torch.long, device=model.device)
        self._graphs = Graphs()

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, tokens: list[int] | Tensor, positions: list[int]) -> Tensor:
        """tokens (ints, or ids [n] on the device) and positions of rows 0..n-1 → fp32 logits
        [n, V], valid until the next call. Queues the step without waiting for the device."""
        n = len(positions)
        cache = self.cache
        bucket = batch_bucket(n, cache.max_batch)
        n_keys = key_bucket(cache.prefix + max(positions) + 1, cache.slots)
        pad = bucket - n
        rows = list(range(n)) + [cache.scratch] * pad
        # non_blocking from pageable memory: staged at once, without waiting for the stream.
        if isinstance(tokens, Tensor):  # sampled on the device: never read back here
            host = torch.tensor([positions + [0] * pad, rows])
            self.inputs[1:, :bucket].copy_(host, non_blocking=True)
            self.inputs[0, :n].copy_(tokens.view(-1))
        else:
            host = torch.tensor([tokens + [0] * pad, positions + [0] * pad, rows])
            self.inputs[:, :bucket].copy_(host, non_blocking=True)
        tok, pos, rows = self.inputs[:, :bucket]

        def step() -> Tensor:
            return self.forward.decode(tok, pos, rows, n_keys)

        key, device = (bucket, n_keys), self.cache.k.device
        if not self.cuda_graphs:
            return with_fallback(step, device, "decode")[:n]
        if key not in self._graphs:  # a capture falls back as a pass does
            with_fallback(lambda: self._graphs.add(key, step), device, "decode")
        return self._graphs(key, step)[:n]
