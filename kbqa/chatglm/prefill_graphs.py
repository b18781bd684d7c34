"""Prompts prefilled by one CUDA graph replay each: whole ones (`PrefillGraphs`) and the
chunks of long ones (`ChunkGraphs`).

The eager fused prefill launches ~15 kernels per layer from Python, ~420 for chatglm2-6b. On
an H100 behind a slow host CPU that took ~45 ms whatever the prompt's length, more than the
GPU's own 30 ms for 1.6k tokens, and each Triton launch lets other Python threads take the GIL:
beside one spinning thread a prefill took seconds (bench/RESULTS.md).

A whole prompt of up to `max_tokens` tokens goes, padded at its end to a multiple of `BUCKET`
tokens, through a graph per padded length: into the cache's scratch row from position 0, then
copied to its own row (a one-row cache's scratch row is its row). Attention is causal, so the
padding changes nothing at or before the prompt's last position, whose logits are picked by
an index read from device memory. Graphs are captured on first use, so that a server starts
without capturing shapes it may never see; with `capture=False` the same passes run eagerly
(the CPU tests' way to hold them to the unpadded prefill).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from kbqa.chatglm.batched import Graphs
from kbqa.chatglm.forward import Forward, Segment

log = logging.getLogger("kbqa.chatglm")

BUCKET = 256
"""Prompts are padded to a multiple of this many tokens (≤ 14% more work at 1.6k)."""
MAX_TOKENS = 2048
"""Longer prompts are GPU-bound anyway and keep the eager (chunked) prefill."""


class _Graphed:
    """Passes of `forward` as CUDA graphs (batched.Graphs; eagerly with capture False), off
    for good once a capture or replay fails (memory, a kernel): the caller's eager path then
    takes over, rewriting whatever was written."""

    def __init__(self, forward: Forward, capture: bool) -> None:
        self.forward = forward
        self.cache = forward.cache
        self.enabled = True
        self._graphs = Graphs(capture)

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def _replay(self, key: Hashable, run: Callable[[], Tensor], what: str) -> Tensor | None:
        """run()'s fp32 logits [1, V] as [V], or None when the graphs failed here."""
        try:
            logits = self._graphs(key, run)
        except Exception:
            log.exception("graphed %s failed; it runs eagerly from now on", what)
            self.enabled = False
            self._graphs.clear()
            return None
        return logits[0].clone()


class PrefillGraphs(_Graphed):
    """Whole-prompt prefills of up to `max_tokens` tokens (and the cache's max_seq) through
    `forward`, captured as CUDA graphs unless `capture` is False."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_tokens: int = MAX_TOKENS,
        bucket: int = BUCKET,
        capture: bool = True,
    ) -> None:
        if bucket < 1:
            raise ValueError(f"bucket must be positive, got {bucket}")
        super().__init__(forward, capture)
        self.bucket = bucket
        self.max_tokens = min(max_tokens, self.cache.max_seq)
        device = self.cache.k.device
        self._ids = torch.zeros(self.max_tokens, dtype=torch.long, device=device)
        self._last = torch.zeros(1, dtype=torch.long, device=device)

    def fits(self, tokens: int) -> bool:
        return self.enabled and 0 < tokens <= self.max_tokens

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
        logits = self._replay(size, lambda: self._padded(size), "prefill")
        if logits is not None:
            self.cache.move(self.cache.scratch, row, tokens)
        return logits

    def _padded(self, size: int) -> Tensor:
        """The padded prompt in the static buffer from position 0 into the scratch row: fp32
        logits [1, V] of position `_last` (read on the device: no host synchronisation)."""
        segment = Segment(self._ids[:size], 0, self.cache.scratch, logits=True)
        logits = self.forward.prefill([segment], picked=self._last)
        assert logits is not None
        return logits


class ChunkGraphs(_Graphed):
    """Chunks of a long prompt, `size` tokens at any position of cache row `row`, through one
    CUDA graph of `Forward.prefill_at` (captured on first use; eagerly with `capture=False`):
    the chunk's ids and first position are static device buffers. Eagerly a chunk is ~1,000
    launches from Python, which on an H200 took ~58 ms for 1,024 tokens whatever the chunk's
    length, against an estimated ~25 ms of GPU work (bench/RESULTS.md)."""

    def __init__(
        self,
        forward: Forward,
        size: int,
        row: int = 0,
        mlp_columns: int | None = None,
        *,
        capture: bool = True,
    ) -> None:
        super().__init__(forward, capture)
        self.size = size
        self.row = row
        self.mlp_columns = mlp_columns
        device = self.cache.k.device
        self._ids = torch.zeros(size, dtype=torch.long, device=device)
        self._start = torch.zeros(1, dtype=torch.long, device=device)

    def __call__(self, piece: Tensor, start: int) -> Tensor | None:
        """Prefill piece, ids [size], at positions start.. of the row: fp32 logits [V] of its
        last token, or None when graphs failed here (then off; the caller runs it eagerly)."""
        if piece.numel() != self.size:
            raise ValueError(f"a chunk of {piece.numel()} tokens, not {self.size}")
        self._ids.copy_(piece)
        self._start.fill_(start)
        return self._replay(None, self._chunk, "prefill chunk")

    def _chunk(self) -> Tensor:
        return self.forward.prefill_at(self._ids, self._start, self.row, self.mlp_columns)
