"""Whole prompts prefilled by one CUDA graph replay each.

The eager fused prefill launches ~15 kernels per layer from Python, ~420 for chatglm2-6b. On
an H100 behind a slow host CPU that took ~45 ms whatever the prompt's length, more than the
GPU's own 30 ms for 1.6k tokens, and each Triton launch lets other Python threads take the GIL:
beside one spinning thread a prefill took seconds (bench/prefill_launch_gpu.py, RESULTS.md).

A whole prompt of up to `max_tokens` tokens instead goes, padded at its end to a multiple of
`BUCKET` tokens, through the fused prefill captured as a graph per padded length: into the
cache's scratch row from position 0, then copied to its own row. Attention is causal, so the
padding after the prompt changes nothing at or before its last position, whose logits are
picked by an index read from device memory. Graphs share one memory pool (they never run at
once) and are captured on first use or by `capture_all()` (the engine's warm-up).

With `capture=False` the same padded pass runs eagerly (the CPU tests' way to hold it to the
unpadded prefill).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kbqa.chatglm.batched_prefill import Prefiller

log = logging.getLogger("kbqa.chatglm")

BUCKET = 256
"""Prompts are padded to a multiple of this many tokens (≤ 14% more work at 1.6k)."""
MAX_TOKENS = 2048
"""Longer prompts are GPU-bound anyway and keep the eager (chunked) prefill."""


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    logits: Tensor  # [1, V] fp32, rewritten by every replay


class PrefillGraphs:
    """Whole-prompt prefills of up to `max_tokens` tokens (and the cache's max_seq) through
    the fused `prefiller`, captured as CUDA graphs unless `capture` is False."""

    def __init__(
        self,
        prefiller: Prefiller,
        *,
        max_tokens: int = MAX_TOKENS,
        bucket: int = BUCKET,
        capture: bool = True,
    ) -> None:
        if not prefiller.fused:
            raise ValueError("graphed prefill needs the fused prefill")
        if bucket < 1:
            raise ValueError(f"bucket must be positive, got {bucket}")
        self.bucket = bucket
        self.prefiller = prefiller
        self.cache = prefiller.cache
        self.max_tokens = min(max_tokens, self.cache.max_seq)
        self.capture = capture
        self.enabled = True
        """False once a capture or replay failed: the eager prefill takes over for good."""
        device = self.cache.k.device
        self._ids = torch.zeros(self.max_tokens, dtype=torch.long, device=device)
        self._last = torch.zeros(1, dtype=torch.long, device=device)
        self._graphs: dict[int, _Graph] = {}
        self._pool: Any = None

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def fits(self, tokens: int) -> bool:
        return self.enabled and self.prefiller.fused and 0 < tokens <= self.max_tokens

    def padded(self, tokens: int) -> int:
        return min(-(-tokens // self.bucket) * self.bucket, self.max_tokens)

    def sizes(self) -> list[int]:
        """Every padded length a prompt can take."""
        return sorted({self.padded(n) for n in range(1, self.max_tokens + 1, self.bucket)})

    def __call__(self, prompt: Tensor, row: int) -> Tensor | None:
        """Prefill a whole prompt, ids [S] (0 < S, `fits(S)`), into cache row `row` from
        position 0; fp32 logits [V] of its last position, or None when graphs failed here
        (they are then off, and nothing was written to `row`)."""
        tokens = prompt.numel()
        if not self.fits(tokens):
            raise ValueError(f"a prompt of {tokens} tokens does not fit the prefill graphs")
        size = self.padded(tokens)
        self._ids[:tokens].copy_(prompt)
        self._last.fill_(tokens - 1)
        try:
            logits = self._run(size)
        except Exception:  # a capture that fails (memory, a kernel): the eager path stays
            log.exception("graphed prefill failed; prompts prefill eagerly from now on")
            self.enabled = False
            self._graphs.clear()
            return None
        self.cache.move(self.cache.scratch, row, tokens)
        return logits[0].clone()

    def capture_all(self) -> None:
        """Capture a graph for every padded length now (writes only the scratch row)."""
        if not self.enabled or not self.prefiller.fused:
            return
        for size in self.sizes():
            if self.capture and size not in self._graphs:
                self._capture(size)

    def _run(self, size: int) -> Tensor:
        if not self.capture:
            return self.prefiller.whole_padded(self._ids[:size], self._last)
        entry = self._graphs.get(size) or self._capture(size)
        entry.graph.replay()
        return entry.logits

    def _capture(self, size: int) -> _Graph:
        ids = self._ids[:size]
        # Once outside the graph first: Triton compiles, autotuning and cuBLAS set-up must not
        # be captured. It writes what the replay will, into the scratch row.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.prefiller.whole_padded(ids, self._last)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self.prefiller.whole_padded(ids, self._last)
        if self._pool is None:
            self._pool = graph.pool()
        entry = _Graph(graph, logits)
        self._graphs[size] = entry
        return entry
