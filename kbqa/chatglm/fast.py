"""Fast batch-1 generation steps over the model's KV cache: chunked prefill and a decode step
built from fused ops (fused.py), captured as one CUDA graph on CUDA.

A decode step for chatglm2-6b reads all 11.95 GB of fp16 weights (3.9 GB in int4), so it is
bound by memory bandwidth: per layer six launches (qkv GEMV with the input RMSNorm fused in,
rotary + cache write, attention in two kernels, dense GEMV + residual, h→4h GEMV with the
post-attention RMSNorm before it and SwiGLU after, 4h→h GEMV + residual), replayed from a
graph so that no launch waits on Python. Prefill is bound by the matmuls (cuBLAS); around
them it runs flash attention (our kernel for chunks after the first) over the cache and
row-wise Triton kernels, and it keeps only the last position's logits.

`decode_steps(model, fast)` is what generate.py uses: this fast path, or the eager model.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from kbqa.chatglm import fused
from kbqa.chatglm.fused import AttnScratch, LinearWeights, Norm
from kbqa.chatglm.model import ChatGLM2Model

# Prompts up to this many tokens prefill in one piece (fastest: the largest matmuls); longer
# ones go in chunks of PREFILL_CHUNK with the MLP in blocks of MLP_ROWS rows, so that
# activations stay ~35 MB and 8k tokens of fp16 fit in 12.8 GB with the weights (12.49 GB)
# and the cache (0.23 GB). Measured on an H100 (bench/RESULTS.md): 512/256 peaked at 12.806 GB,
# 256/128 at 12.789 GB (with cuBLAS's workspace capped, see model.py).
SINGLE_PREFILL = 2048
PREFILL_CHUNK = 256
MLP_ROWS = 128


class Steps(Protocol):
    """Batch-1 generation over the KV cache; both return fp32 logits [V] of the last token."""

    def prefill(self, ids: Tensor) -> Tensor: ...

    def decode(self, token: Tensor, pos: int) -> Tensor: ...


class EagerSteps:
    """The model's own forward (the reference, and the path off CUDA)."""

    def __init__(self, model: ChatGLM2Model) -> None:
        self.model = model

    def prefill(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.numel(), device=ids.device)  # [S]
        return self.model(ids.view(1, -1), positions, last_logits_only=True)[0, -1].float()

    def decode(self, token: Tensor, pos: int) -> Tensor:
        position = torch.tensor([pos], device=token.device)  # [1]
        return self.model(token.view(1, 1), position)[0, -1].float()


@dataclass
class _Layer:
    norm1: Norm
    qkv: LinearWeights
    dense: LinearWeights
    norm2: Norm
    h_to_4h: LinearWeights
    h4_to_h: LinearWeights
    k_cache: Tensor  # [G, slots, D]: batch row 0 of the layer's cache
    v_cache: Tensor

    def tensors(self) -> list[Tensor]:
        found = [self.norm1.weight, self.norm2.weight, self.k_cache, self.v_cache]
        for lw in (self.qkv, self.dense, self.h_to_4h, self.h4_to_h):
            found += lw.tensors()
        return found


class FastSteps:
    """Prefill and decode through fused ops; the decode step is a CUDA graph on CUDA.

    Built over the model's current weights and cache (`setup_caches` first); `key()` changes
    when either is replaced, and decode_steps() then builds a new one.
    """

    def __init__(self, model: ChatGLM2Model, graph: bool | None = None) -> None:
        cfg = model.config
        if cfg.apply_residual_connection_post_layernorm:
            raise ValueError("the fast path needs apply_residual_connection_post_layernorm=False")
        t = model.transformer
        self.model = model
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.kv_channels
        self.prefix = t.prefix_len
        self.embed = t.embedding.word_embeddings.weight.detach()  # [V, H]
        self.rope = t.rope  # [seq_length, D/4, 2] fp32
        self.final_norm = Norm.of(t.encoder.final_layernorm)
        self.output = LinearWeights.of(t.output_layer)
        self.layers: list[_Layer] = []
        for block in t.encoder.blocks():
            attn, mlp = block.self_attention, block.mlp
            if attn.kv_cache is None:
                raise ValueError("call setup_caches() before building FastSteps")
            norm1, norm2 = Norm.of(block.input_layernorm), Norm.of(block.post_attention_layernorm)
            assert norm1 is not None and norm2 is not None
            weights = [
                LinearWeights.of(m)
                for m in (attn.query_key_value, attn.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h)
            ]
            caches = attn.kv_cache.k_cache[0], attn.kv_cache.v_cache[0]
            qkv, dense, h_to_4h, h4_to_h = weights
            self.layers.append(_Layer(norm1, qkv, dense, norm2, h_to_4h, h4_to_h, *caches))
        self.scratch = AttnScratch.for_cache(self.layers[0].k_cache, self.heads)
        self.prefill_chunk = PREFILL_CHUNK
        self.use_graph = self.embed.device.type == "cuda" if graph is None else graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._token = torch.zeros(1, dtype=torch.long, device=self.embed.device)  # [1]
        self._pos = torch.zeros(1, dtype=torch.long, device=self.embed.device)  # [1]
        self._logits = torch.empty(0)

    @staticmethod
    def key(model: ChatGLM2Model) -> tuple[int, ...]:
        """Identity of every tensor the steps read (weights and cache)."""
        return tuple(t.data_ptr() for t in model.state_dict(keep_vars=True).values()) + tuple(
            block.self_attention.kv_cache.k_cache.data_ptr()
            for block in model.transformer.encoder.blocks()
            if block.self_attention.kv_cache is not None
        )

    # ---------------------------------------------------------------------------------------
    # Prefill

    def prefill(self, ids: Tensor, start: int = 0) -> Tensor:
        """ids [S] at positions start.. → fp32 logits [V] of the last one; fills the cache."""
        seq = ids.numel()
        chunk = seq if seq <= SINGLE_PREFILL else self.prefill_chunk
        mlp_rows = chunk if chunk == seq else MLP_ROWS
        last = torch.empty(0)
        for c0 in range(0, seq, chunk):
            last = self._prefill_chunk(ids[c0 : c0 + chunk], start + c0, mlp_rows)
        return self._logits_of(last)

    def _prefill_chunk(self, ids: Tensor, start: int, mlp_rows: int) -> Tensor:
        """ids [S] → the last position's hidden state [H] before the final norm."""
        seq = ids.numel()
        n = self.heads
        pos = torch.arange(start, start + seq, device=ids.device)  # [S]
        x = F.embedding(ids, self.embed)  # [S, H]
        res: Tensor | None = None
        for layer in self.layers:
            x, h = fused.rmsnorm(x, res, layer.norm1)  # x += res; h = norm(x)
            qkv = fused.linear_rows(layer.qkv, h)  # [S, (N + 2G) * D]
            fused.rope_cache(qkv, self.rope, pos, layer.k_cache, layer.v_cache, n, self.prefix)
            first = self.prefix + start  # cache slot of this chunk's first token
            y = fused.attention_prefill(qkv, layer.k_cache, layer.v_cache, n, first)  # [S, N*D]
            del qkv  # drop activations as soon as they are used: the 8k budget is tight
            res = fused.linear_rows(layer.dense, y)  # [S, H]
            del y
            x, h = fused.rmsnorm(x, res, layer.norm2)
            del res
            res = torch.empty_like(x)
            for r0 in range(0, seq, mlp_rows):  # the MLP in row blocks: its [rows, 3F] is big
                rows = slice(r0, r0 + mlp_rows)
                act = fused.swiglu(fused.linear_rows(layer.h_to_4h, h[rows]))  # [rows, F]
                res[rows] = fused.linear_rows(layer.h4_to_h, act)  # [rows, H]
                del act
            del h
        assert res is not None
        return x[-1] + res[-1]  # [H]

    def _logits_of(self, hidden: Tensor) -> Tensor:
        return fused.linear_vec(self.output, hidden, norm=self.final_norm, out_dtype=torch.float32)

    # ---------------------------------------------------------------------------------------
    # Decode

    def step(self, token: Tensor, pos: Tensor) -> Tensor:
        """One token: token [1], pos [1] (device tensors) → fp32 logits [V]. No host syncs and
        fixed shapes, so it can be captured."""
        n, p = self.heads, self.prefix
        # The residual stream x [H] is fp32, updated in place by the dense and 4h→h GEMVs.
        x = self.embed[token].view(-1).float()
        dtype = self.embed.dtype
        for layer in self.layers:
            qkv = fused.linear_vec(layer.qkv, x, norm=layer.norm1, out_dtype=dtype)  # [W]
            fused.rope_cache(qkv.view(1, -1), self.rope, pos, layer.k_cache, layer.v_cache, n, p)
            q = qkv[: n * self.head_dim]  # [N * D]
            y = fused.attn_decode(q, layer.k_cache, layer.v_cache, pos, p, self.scratch)
            fused.linear_vec(layer.dense, y, accumulate=x)  # x += W y
            # h→4h writes silu(gate) * up [F] directly.
            act = fused.linear_vec(layer.h_to_4h, x, norm=layer.norm2, glu=True, out_dtype=dtype)
            fused.linear_vec(layer.h4_to_h, act, accumulate=x)
        return self._logits_of(x)

    def decode(self, token: Tensor, pos: int) -> Tensor:
        """token (one id, device tensor) at position pos → fp32 logits [V]. On the graph path
        the result is a static buffer, overwritten by the next call."""
        self._token.copy_(token.view(1))
        self._pos.fill_(pos)
        if not self.use_graph:
            return self.step(self._token, self._pos)
        if self._graph is None:
            self._capture()
        assert self._graph is not None
        self._graph.replay()
        return self._logits

    def _capture(self) -> None:
        # Warm up on a side stream first: Triton compiles (and may autotune) on first use,
        # which must not happen inside a capture. Each run writes the same k/v into the same
        # cache slot, so the warm-up changes nothing that the replay will not write again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step(self._token, self._pos)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = self.step(self._token, self._pos)
        self._graph = graph


_CACHE: weakref.WeakKeyDictionary[ChatGLM2Model, tuple[tuple[int, ...], FastSteps]] = (
    weakref.WeakKeyDictionary()
)


def fast_supported(model: ChatGLM2Model) -> bool:
    """Whether `fast=None` picks the fast path: CUDA with Triton, and a supported layout."""
    return (
        model.device.type == "cuda"
        and fused.triton_for(model.transformer.rope) is not None
        and not model.config.apply_residual_connection_post_layernorm
    )


def decode_steps(model: ChatGLM2Model, fast: bool | None = None) -> Steps:
    """The steps generate() runs: FastSteps when fast is True (or None and fast_supported),
    else the eager model. FastSteps (and its CUDA graph) is reused while the model's weights
    and cache stay the same tensors."""
    if fast is False or (fast is None and not fast_supported(model)):
        return EagerSteps(model)
    key = FastSteps.key(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    steps = FastSteps(model)
    _CACHE[model] = (key, steps)
    return steps
