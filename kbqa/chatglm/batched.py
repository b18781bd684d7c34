"""Forward passes for continuous batching: every sequence has its own cache row and position.

`SlotCache` holds the keys/values of up to `max_batch` sequences, one row each, plus a
scratch row: [layers, max_batch + 1, G, slots, D], allocated once, so its memory is bounded by
max_batch × max_seq. `prefill` runs a chunk of one sequence's prompt into its row;
`DecodeStep` runs one token of rows 0..n-1 (row i is batch element i), captured as CUDA graphs
per (batch bucket, key bucket) on CUDA so that a step costs one launch rather than ~1,500.

The layers are the model's own modules (its linears, norms and MLP, so FP16, INT8 and INT4 all
work unchanged, and results match the model's forward); only attention and the cache are
handled here, because the model's forward shares one position vector across the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from kbqa.chatglm.model import ChatGLM2Model, GLMBlock, RMSNorm, SelfAttention, apply_rotary
from kbqa.chatglm.quantize import QuantizedLinear
from kbqa.chatglm.triton_use import kernels_run_on

log = logging.getLogger("kbqa.chatglm")

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


class SlotCache:
    """Keys and values of max_batch sequence rows plus one scratch row that padded batch rows
    write into: k, v [layers, max_batch + 1, G, slots, D] with slots = P + max_seq.

    With P-tuning every row holds the prefix in slots 0..P-1; position p lives in slot P + p.
    """

    def __init__(self, model: ChatGLM2Model, max_batch: int, max_seq: int) -> None:
        cfg = model.config
        if max_batch < 1 or max_seq < 2:
            raise ValueError(f"need max_batch >= 1 and max_seq >= 2, got {max_batch}, {max_seq}")
        if max_seq > cfg.seq_length:
            raise ValueError(f"max_seq {max_seq} exceeds the model's seq_length {cfg.seq_length}")
        self.max_batch = max_batch
        self.max_seq = max_seq
        self.prefix = model.transformer.prefix_len
        self.slots = self.prefix + max_seq
        self.scratch = max_batch  # the row that padded decode rows write into
        shape = (cfg.num_layers, max_batch + 1, cfg.kv_groups, self.slots, cfg.kv_channels)
        # Zeros, not empty: masked slots still enter attention as 0 × value, and a NaN left in
        # uninitialised memory would turn that into NaN.
        self.k = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.v = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.write_prefix(model)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def write_prefix(self, model: ChatGLM2Model) -> None:
        """Copy the P-tuning prefix keys/values into slots 0..P-1 of every row."""
        encoder = model.transformer.prefix_encoder
        if encoder is None:
            return
        with torch.no_grad():
            prefix = encoder().to(self.k.dtype)  # [L, 2, G, P, D]
        self.k[:, :, :, : self.prefix] = prefix[:, 0].unsqueeze(1)  # over [L, R, G, P, D]
        self.v[:, :, :, : self.prefix] = prefix[:, 1].unsqueeze(1)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions (and the prefix) of row src into row dst."""
        end = self.prefix + length
        self.k[:, dst, :, :end] = self.k[:, src, :, :end]
        self.v[:, dst, :, :end] = self.v[:, src, :, :end]


# An attention variant: (layer's attention, its normed input h, layer index) → its output.
Attend = Callable[[SelfAttention, Tensor, int], Tensor]


def _block(layer: GLMBlock, x: Tensor, attend: Attend, index: int) -> Tensor:
    """GLMBlock.forward with the attention swapped for `attend`: x [B, S, hidden]."""
    h = layer.input_layernorm(x)
    a = attend(layer.self_attention, h, index)
    x = (h if layer.residual_after_norm else x) + a
    h = layer.post_attention_layernorm(x)
    return (h if layer.residual_after_norm else x) + layer.mlp(h)


def _split_qkv(attn: SelfAttention, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """h [B, S, hidden] → q [B, S, N, D], k [B, S, G, D], v [B, S, G, D] (not yet rotated)."""
    batch, seq, _ = h.shape
    n, g, d = attn.n_head, attn.n_group, attn.head_dim
    q, k, v = attn.query_key_value(h).split([n * d, g * d, g * d], dim=-1)
    return q.view(batch, seq, n, d), k.view(batch, seq, g, d), v.view(batch, seq, g, d)


def prefill(
    model: ChatGLM2Model, cache: SlotCache, ids: Tensor, start: int, row: int, logits: bool
) -> Tensor | None:
    """Run prompt tokens ids [S] at positions start..start+S-1 of cache row `row`.

    Writes their keys/values and returns the last position's logits [V] if `logits`, else None
    (an intermediate chunk of a long prompt). Attends over the row's first P + start + S slots.
    """
    t = model.transformer
    seq = ids.numel()
    device = ids.device
    positions = torch.arange(start, start + seq, device=device)  # [S]
    slots = positions + cache.prefix  # [S]
    n_keys = cache.prefix + start + seq
    rope = t.rope[positions]  # [S, D/4, 2]
    # The S queries are the last S of the n_keys slots and each sees the slots up to its own
    # (the prefix included): causal aligned to the lower right. Flash / memory-efficient
    # attention take that without a materialised mask, and read the G key/value heads
    # directly (enable_gqa: query head h reads group h // (N / G)).
    causal: dict[str, object] = (
        {"is_causal": True} if n_keys == seq else {"attn_mask": causal_lower_right(seq, n_keys)}
    )

    def attend(attn: SelfAttention, h: Tensor, index: int) -> Tensor:
        q, k, v = _split_qkv(attn, h)  # [1, S, N|G, D]
        q = apply_rotary(q, rope).transpose(1, 2)  # [1, N, S, D]
        k = apply_rotary(k, rope)
        cache.k[index, row, :, slots] = k[0].transpose(0, 1)  # [G, S, D]
        cache.v[index, row, :, slots] = v[0].transpose(0, 1)
        keys = cache.k[index, row : row + 1, :, :n_keys]  # [1, G, T, D]
        values = cache.v[index, row : row + 1, :, :n_keys]
        y = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            enable_gqa=True,
            **causal,  # type: ignore[arg-type]
        )  # [1, N, S, D]
        return attn.dense(y.transpose(1, 2).reshape(1, seq, -1))

    x = t.embedding(ids.view(1, -1))  # [1, S, hidden]
    for i, layer in enumerate(t.encoder.blocks()):
        x = _block(layer, x, attend, i)
    if not logits:
        return None
    last = t.encoder.final_layernorm(x[:, -1:])  # [1, 1, hidden]
    return t.output_layer(last)[0, -1]  # [V]


def fused_kernels(model: ChatGLM2Model) -> ModuleType | None:
    """batched_kernels (Triton) where the fused decode can run: where the kernels run
    (triton_use.py), fp16/bf16/fp32, residuals taken before the norms (chatglm2-6b); else
    None."""
    if (
        not kernels_run_on(model.device)
        or model.dtype not in (torch.float16, torch.bfloat16, torch.float32)
        or model.config.apply_residual_connection_post_layernorm
    ):
        return None
    from kbqa.chatglm import batched_kernels

    return batched_kernels


def decode(
    model: ChatGLM2Model,
    cache: SlotCache,
    tokens: Tensor,
    pos: Tensor,
    write_rows: Tensor,
    n_keys: int,
    kernels: ModuleType | None = None,
) -> Tensor:
    """One token for each of B batch rows → logits [B, V].

    tokens, pos [B]: the token and its position for batch row b, which reads cache row b over
    slots 0..n_keys-1 (those past its own position are masked) and writes its key/value into
    cache row write_rows[b] (b itself, or the scratch row for padding). Fixed shapes and no
    host synchronisation, so it can be captured in a CUDA graph. With `kernels`
    (batched_kernels) the row-wise work runs fused; without, through the model's modules.
    """
    if kernels is not None:
        return _decode_fused(model, cache, tokens, pos, write_rows, n_keys, kernels)
    t = model.transformer
    batch = tokens.numel()
    slots = pos + cache.prefix  # [B]
    visible = torch.arange(n_keys, device=tokens.device) <= slots.unsqueeze(1)  # [B, T]
    mask = visible[:, None, None, :]  # [B, 1, 1, T]
    # apply_rotary rotates [1, S, H, D] by rope [S, …]: the batch rows stand in as positions.
    rope = t.rope[pos]  # [B, D/4, 2]

    def attend(attn: SelfAttention, h: Tensor, index: int) -> Tensor:
        q, k, v = _split_qkv(attn, h)  # [B, 1, N|G, D]
        n, g, d = attn.n_head, attn.n_group, attn.head_dim
        q = apply_rotary(q.view(1, batch, n, d), rope)  # [1, B, N, D]
        k = apply_rotary(k.view(1, batch, g, d), rope)  # [1, B, G, D]
        cache.k[index, write_rows, :, slots] = k[0]  # [B, G, D]
        cache.v[index, write_rows, :, slots] = v.view(batch, g, d)
        # The N/G query heads of a group share its keys: as [B, G, N/G, D] they attend as
        # N/G query rows of one head, so each key is read once (no repeat_interleave copy).
        qg = q.view(batch, g, n // g, d)
        keys = cache.k[index, :batch, :, :n_keys]  # [B, G, T, D]
        values = cache.v[index, :batch, :, :n_keys]
        y = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask)  # [B, G, N/G, D]
        return attn.dense(y.reshape(batch, 1, n * d))

    x = t.embedding(tokens.view(batch, 1))  # [B, 1, hidden]
    for i, layer in enumerate(t.encoder.blocks()):
        x = _block(layer, x, attend, i)
    x = t.encoder.final_layernorm(x)
    return t.output_layer(x[:, 0])  # [B, V]


def _decode_fused(
    model: ChatGLM2Model,
    cache: SlotCache,
    tokens: Tensor,
    pos: Tensor,
    write_rows: Tensor,
    n_keys: int,
    kernels: ModuleType,
) -> Tensor:
    """`decode` with the norms, residual adds, rotary, cache writes, attention and SwiGLU in
    Triton, and the float matmuls by the skinny Triton kernel while the batch is small:
    8 launches per layer instead of ~55. Each layer's MLP output is added to the residual
    stream by the next layer's norm kernel."""
    t = model.transformer
    x = t.embedding(tokens)  # [B, hidden]
    residual: Tensor | None = None
    for i, layer in enumerate(t.encoder.blocks()):
        attn, mlp = layer.self_attention, layer.mlp
        norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
        x, h = kernels.add_rmsnorm(x, residual, norm1.weight, norm1.eps)
        qkv = linear(attn.query_key_value, h, kernels)  # [B, (N + 2G) * D]
        kernels.rope_cache(
            qkv, t.rope, pos, write_rows, cache.k[i], cache.v[i], cache.prefix, attn.n_head
        )
        # q was rotated in place; row b reads its own cache row over its own length.
        y = kernels.attn_decode_rows(
            qkv, cache.k[i], cache.v[i], pos, cache.prefix, attn.n_head, n_keys
        )
        a = linear(attn.dense, y, kernels)  # [B, hidden]
        x, h = kernels.add_rmsnorm(x, a, norm2.weight, norm2.eps)
        gate_up = linear(mlp.dense_h_to_4h, h, kernels)  # [B, 2F]
        residual = linear(mlp.dense_4h_to_h, kernels.swiglu(gate_up), kernels)  # [B, hidden]
    final = t.encoder.final_layernorm
    assert residual is not None
    if isinstance(final, RMSNorm):
        _, h = kernels.add_rmsnorm(x, residual, final.weight, final.eps)
    else:
        h = x + residual
    return linear(t.output_layer, h, kernels)  # [B, V]


def linear(module: nn.Module, x: Tensor, kernels: ModuleType) -> Tensor:
    """module(x), but float weights at a few rows go through the skinny Triton matmul, and an
    int4 QuantizedLinear (whose own forward takes ~8 torch passes over the weight) through the
    int4 matmul that reads the packed weights, up to INT4_MATMUL_MAX_ROWS rows (a decode
    step); more rows (a prefill) dequantize the weight in one kernel and share one cuBLAS
    matmul."""
    rows = x.shape[0]
    if isinstance(module, nn.Linear) and rows <= kernels.SKINNY_MAX_ROWS:
        return kernels.skinny_linear(x, module.weight, module.bias)
    if isinstance(module, QuantizedLinear) and module.bits == 4:
        if rows <= kernels.INT4_MATMUL_MAX_ROWS and module.in_features % 8 == 0:
            words = module.weight.view(torch.int32)  # [out, in / 8]
            return kernels.int4_linear(x, words, module.weight_scale, module.bias)
        weight = kernels.dequant_int4(module.weight, module.weight_scale, x.dtype)  # [out, in]
        return F.linear(x, weight, module.bias)
    return module(x)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    logits: Tensor  # [bucket, V], rewritten by every replay


class DecodeStep:
    """Runs `decode` for sequences in cache rows 0..n-1, padded to a batch bucket; on CUDA each
    (batch bucket, key bucket) is captured once as a CUDA graph and replayed after."""

    def __init__(
        self,
        model: ChatGLM2Model,
        cache: SlotCache,
        cuda_graphs: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        on_cuda = model.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs and on_cuda
        # None: fused kernels wherever they can run; False: the model's modules.
        self.kernels = fused_kernels(model) if fused is not False else None
        if fused and self.kernels is None:
            raise ValueError("the fused decode needs CUDA, fp16/bf16 and triton")
        # Static inputs that graphs read: rows are tokens, positions and write rows [3, R].
        self.inputs = torch.zeros(3, cache.max_batch, dtype=torch.long, device=model.device)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool: Any = None  # the graphs' shared memory pool, once the first is captured

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, tokens: list[int], positions: list[int]) -> Tensor:
        """tokens, positions of rows 0..n-1 → logits [n, V] (valid until the next call)."""
        n = len(tokens)
        cache = self.cache
        bucket = batch_bucket(n, cache.max_batch)
        n_keys = key_bucket(cache.prefix + max(positions) + 1, cache.slots)
        pad = bucket - n
        host = torch.tensor(
            [tokens + [0] * pad, positions + [0] * pad, list(range(n)) + [cache.scratch] * pad]
        )
        self.inputs[:, :bucket].copy_(host)
        if not self.cuda_graphs:
            return self._eager(bucket, n_keys)[:n]
        entry = self._graphs.get((bucket, n_keys))
        if entry is None:
            entry = self._capture(bucket, n_keys)
        entry.graph.replay()
        return entry.logits[:n]

    def _eager(self, bucket: int, n_keys: int) -> Tensor:
        """decode() over the static inputs. A fused kernel that fails (to compile, on a
        Triton the kernels were not built for) turns the fused path off for good; the step
        is then run again through the modules, which rewrite the same cache entries."""
        tok, pos, rows = self.inputs[:, :bucket]
        if self.kernels is not None:
            try:
                return decode(self.model, self.cache, tok, pos, rows, n_keys, self.kernels)
            except Exception:
                log.exception("fused batched decode failed; using the model's modules")
                self.kernels = None
                self._graphs.clear()
        return decode(self.model, self.cache, tok, pos, rows, n_keys)

    def _capture(self, bucket: int, n_keys: int) -> _Graph:
        tok, pos, rows = self.inputs[:, :bucket]
        # Warm up outside the graph (cuBLAS and allocator set-up, Triton compiles must not be
        # captured). It writes the keys/values that the replay will, so it changes nothing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._eager(bucket, n_keys)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # One memory pool for all graphs: they never run at once, so their scratch can overlap.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = decode(self.model, self.cache, tok, pos, rows, n_keys, self.kernels)
        if self._pool is None:
            self._pool = graph.pool()
        entry = _Graph(graph, logits)
        self._graphs[(bucket, n_keys)] = entry
        return entry
