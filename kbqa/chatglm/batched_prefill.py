"""Prefill for continuous batching: the prompt pieces of several sequences in one forward pass.

Each `Segment` is a run of one sequence's prompt tokens at known positions of its own cache
row. The matmuls, norms and MLP see all segments' tokens as one [S_total, hidden] block (the
bigger the block, the nearer cuBLAS runs to its peak); only rotary, the cache writes and
attention are done per segment, each over its own row. On CUDA this runs the fast path's fused
ops (fused.py: Triton norms, rotary and causal attention over the cache in place) and the
decode step's matmuls (batched.linear: cuBLAS, with an int4 weight unpacked whole by one
Triton kernel first, which beats fused.linear_rows' 64 MB blocks here); elsewhere,
and whenever the fused decode cannot run, each segment goes through the model's own modules
(batched.prefill), which is what the CPU exactness tests hold the engine to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kbqa.chatglm import fused
from kbqa.chatglm.batched import SlotCache, fused_kernels, linear, prefill
from kbqa.chatglm.fused import LinearWeights, Norm
from kbqa.chatglm.model import ChatGLM2Model

log = logging.getLogger("kbqa.chatglm")

# The MLP runs over this many rows at a time: its [rows, 2F] activation is the largest
# temporary of a prefill (1,024 rows × 27,392 × 2 × 2 bytes = 112 MB for chatglm2-6b).
MLP_ROWS = 1024


@dataclass(frozen=True)
class Segment:
    """Prompt tokens ids [S] (on the model's device) at positions start..start+S-1 of cache
    row `row`; `logits`: whether this is the prompt's last piece, whose logits are wanted."""

    ids: Tensor
    start: int
    row: int
    logits: bool


@dataclass(frozen=True)
class _Layer:
    norm1: Norm
    qkv: nn.Module
    dense: nn.Module
    norm2: Norm
    h_to_4h: nn.Module
    h4_to_h: nn.Module


class Prefiller:
    """Runs segments into a SlotCache; returns fp32 logits [n, V] of the segments that ask for
    them, in order (None when none does).

    fused: None picks the fused ops where the fused decode runs (CUDA, Triton, chatglm2-6b's
    layout); True forces them (on the CPU they run their torch references: for tests).
    """

    def __init__(
        self, model: ChatGLM2Model, cache: SlotCache, fused_ops: bool | None = None
    ) -> None:
        self.model = model
        self.cache = cache
        supported = not model.config.apply_residual_connection_post_layernorm
        if fused_ops and not supported:
            raise ValueError("fused prefill needs apply_residual_connection_post_layernorm=False")
        self.kernels = fused_kernels(model)
        self.fused = self.kernels is not None if fused_ops is None else fused_ops
        t = model.transformer
        self.heads = model.config.num_attention_heads
        self.head_dim = model.config.kv_channels
        self.embed = t.embedding.word_embeddings.weight.detach()  # [V, H]
        self.final_norm = Norm.of(t.encoder.final_layernorm)
        self.output = t.output_layer
        self.layers: list[_Layer] = []
        if self.fused:
            for block in t.encoder.blocks():
                attn, mlp = block.self_attention, block.mlp
                norm1 = Norm.of(block.input_layernorm)
                norm2 = Norm.of(block.post_attention_layernorm)
                assert norm1 is not None and norm2 is not None
                modules = attn.query_key_value, attn.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h
                self.layers.append(_Layer(norm1, modules[0], modules[1], norm2, *modules[2:]))

    def __call__(self, segments: Sequence[Segment]) -> Tensor | None:
        if not segments:
            raise ValueError("nothing to prefill")
        for s in segments:
            if s.ids.numel() == 0 or s.start + s.ids.numel() > self.cache.max_seq:
                raise ValueError(f"segment of {s.ids.numel()} tokens at {s.start} does not fit")
        if self.fused:
            try:
                return self._fused(segments)
            except torch.OutOfMemoryError:
                raise  # the prompts' fault, not the kernels': the engine fails them
            except Exception:
                # A kernel that fails (to compile, on a Triton it was not built for) turns the
                # fused prefill off for good, as the decode step does; the modules then write
                # the same cache entries again.
                log.exception("fused prefill failed; using the model's modules")
                self.fused = False
        return self._through_modules(segments)

    def whole_padded(self, ids: Tensor, last: Tensor) -> Tensor:
        """A prompt padded at its end, ids [B], from position 0 into the cache's scratch row
        through the fused ops, without a host synchronisation (so it can be captured in a CUDA
        graph): fp32 logits [1, V] of position `last` ([1] on the device)."""
        logits = self._fused([Segment(ids, 0, self.cache.scratch, logits=True)], picked=last)
        assert logits is not None
        return logits

    def _through_modules(self, segments: Sequence[Segment]) -> Tensor | None:
        found = []
        for s in segments:
            logits = prefill(self.model, self.cache, s.ids, s.start, s.row, s.logits)
            if logits is not None:
                found.append(logits.float())
        return torch.stack(found) if found else None

    def _fused(self, segments: Sequence[Segment], picked: Tensor | None = None) -> Tensor | None:
        """`picked`: the rows of the [S_total] block whose logits to return, on the device;
        by default the last of each segment that asks for logits."""
        cache, n = self.cache, self.heads
        rope = self.model.transformer.rope  # [seq_length, D/4, 2] fp32
        ids = torch.cat([s.ids for s in segments])  # [S_total]
        device = ids.device
        bounds: list[tuple[int, int]] = []
        for s in segments:
            begin = bounds[-1][1] if bounds else 0
            bounds.append((begin, begin + s.ids.numel()))
        pos = torch.cat(
            [torch.arange(s.start, s.start + s.ids.numel(), device=device) for s in segments]
        )  # [S_total]
        total = ids.numel()
        x = F.embedding(ids, self.embed)  # [S_total, H]
        res: Tensor | None = None
        for i, layer in enumerate(self.layers):
            x, h = fused.rmsnorm(x, res, layer.norm1)  # x += res; h = norm(x)
            qkv = self._linear(layer.qkv, h)  # [S_total, (N + 2G) * D]
            del h
            y = torch.empty(total, n * self.head_dim, dtype=x.dtype, device=device)
            for s, (a, b) in zip(segments, bounds, strict=True):
                k_row, v_row = cache.k[i, s.row], cache.v[i, s.row]  # [G, slots, D]
                fused.rope_cache(qkv[a:b], rope, pos[a:b], k_row, v_row, n, cache.prefix)
                first = cache.prefix + s.start  # cache slot of the segment's first token
                y[a:b] = fused.attention_prefill(qkv[a:b], k_row, v_row, n, first)
            del qkv
            res = self._linear(layer.dense, y)  # [S_total, H]
            del y
            x, h = fused.rmsnorm(x, res, layer.norm2)
            res = torch.empty_like(x)
            for r0 in range(0, total, MLP_ROWS):
                rows = slice(r0, r0 + MLP_ROWS)
                act = fused.swiglu(self._linear(layer.h_to_4h, h[rows]))  # [rows, F]
                res[rows] = self._linear(layer.h4_to_h, act)  # [rows, H]
                del act
            del h
        if picked is None:
            last = [b - 1 for s, (_, b) in zip(segments, bounds, strict=True) if s.logits]
            if not last:
                return None
            picked = torch.tensor(last, device=device)
        assert res is not None
        hidden = x[picked] + res[picked]  # [n, H]
        if self.final_norm is not None:
            _, hidden = fused.rmsnorm(hidden, None, self.final_norm)
        return self._linear(self.output, hidden).float()  # [n, V]

    def _linear(self, module: nn.Module, x: Tensor) -> Tensor:
        """module(x) as the decode step runs it on CUDA; elsewhere fused.linear_rows."""
        if self.kernels is not None:
            return linear(module, x, self.kernels)
        return fused.linear_rows(LinearWeights.of(module), x)
