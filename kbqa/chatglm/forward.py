"""The fast forward of ChatGLM2: one implementation of the layer for every row count and cache
addressing, beside the eager model (model.py), which stays the readable reference.

A pass runs a flat block of T tokens, each with its position and its row of a `SlotCache`:
a prefill pass is one or more `Segment`s (runs of one sequence's prompt, attending causally
over their own row), a decode pass one token per row (row b of the cache for batch row b,
each over its own length). The layers never know which: only the attention call differs.
Single-stream `generate` on CUDA is this with one row (generate.py), the batching engine
with many (batching.py); CUDA graphs of it are captured by batched.py and prefill_graphs.py.
The ops and the choice of kernel per weight and row count are in fused.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kbqa.chatglm import fused
from kbqa.chatglm.fused import LinearWeights, Norm
from kbqa.chatglm.model import ChatGLM2Model
from kbqa.chatglm.triton_use import with_fallback

# The MLP runs over this many rows at a time: its [rows, 2F] activation is the largest
# temporary of a prefill (2,048 rows × 27,392 × 2 bytes = 112 MB for chatglm2-6b). A whole
# prompt of up to 2,048 tokens is one block, so that int4 weights are dequantized once per
# prefill, not once per block (1,024-row blocks: 2,000 tokens in 53–56 ms against 48 ms
# before, bench/RESULTS.md).
MLP_ROWS = 2048
# A chunk of a long prompt (generate.py) instead runs its MLP in blocks of this many of the
# ffn_hidden_size intermediate features: [rows, 2F] gate/up is never whole, so a chunk can be
# long (1,024 rows) within fp16's 8k memory goal, and the weights are still read once per
# chunk (block c: gate and up from rows c and F + c of h_to_4h, then columns c of 4h_to_h,
# added into the residual stream). A multiple of 8 (int4 words); chatglm2-6b's F/4.
MLP_COLUMNS = 3424


class SlotCache:
    """Keys and values of max_batch sequence rows, plus (with several rows) one scratch row
    that padded batch rows write into: k, v [layers, rows, G, slots, D], slots = P + max_seq,
    allocated once, so its memory is bounded by max_batch × max_seq.

    With P-tuning every row holds the prefix in slots 0..P-1; position p lives in slot P + p.

    A model split over devices (devices.py) keeps each layer's keys and values on that layer's
    device: one such pair of tensors per layer range, `ranges`; `k` and `v` are the first
    range's, the whole cache on one device.
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
        # One row never pads (nor needs a row to prefill padded prompts in: it is its own).
        self.scratch = max_batch if max_batch > 1 else 0
        # A tensor-parallel rank keeps only its own key/value groups (tensor_parallel.py).
        groups = model.transformer.encoder.blocks()[0].self_attention.n_group
        # Zeros, not empty: masked slots still enter attention as 0 × value, and a NaN left in
        # uninitialised memory would turn that into NaN.
        split = model.layer_split or ((model.device, range(cfg.num_layers)),)
        self.ranges: list[tuple[range, Tensor, Tensor]] = []  # (layers, k, v) per range
        for device, layers in split:
            shape = (len(layers), self.scratch + 1, groups, self.slots, cfg.kv_channels)
            k = torch.zeros(shape, dtype=model.dtype, device=device)
            self.ranges.append((layers, k, torch.zeros_like(k)))
        _, self.k, self.v = self.ranges[0]
        self._by_layer = [(k[j], v[j]) for r, k, v in self.ranges for j in range(len(r))]
        self.write_prefix(model)

    @property
    def nbytes(self) -> int:
        return sum(2 * k.numel() * k.element_size() for _, k, _ in self.ranges)

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer i's keys and values [rows, G, slots, D] (views), on its device."""
        return self._by_layer[i]

    def write_prefix(self, model: ChatGLM2Model) -> None:
        """Copy the P-tuning prefix keys/values into slots 0..P-1 of every row."""
        encoder = model.transformer.prefix_encoder
        if encoder is None:
            return
        with torch.no_grad():
            prefix = encoder().to(self.k.dtype)  # [L, 2, G, P, D]
        for layers, k, v in self.ranges:
            part = prefix[layers.start : layers.stop].to(k.device)
            k[:, :, :, : self.prefix] = part[:, 0].unsqueeze(1)  # over [L, R, G, P, D]
            v[:, :, :, : self.prefix] = part[:, 1].unsqueeze(1)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions (and the prefix) of row src into row dst."""
        if src == dst:
            return
        end = self.prefix + length
        for _, k, v in self.ranges:
            k[:, dst, :, :end] = k[:, src, :, :end]
            v[:, dst, :, :end] = v[:, src, :, :end]


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
    qkv: LinearWeights
    dense: LinearWeights
    norm2: Norm
    h_to_4h: LinearWeights
    h4_to_h: LinearWeights


# How a pass attends: (q-rotated qkv [T, W], layer index) → [T, N * D].
Attend = Callable[[Tensor, int], Tensor]


class Forward:
    """The model's weights as the fused ops read them, over a SlotCache. Built over the
    model's current tensors: rebuild it when they are replaced (generate.py keys on them).

    `forward(segments)` prefills with the fallback policy of triton_use.py; `prefill` and
    `decode` are the passes themselves (fixed shapes and no host synchronisation for decode
    and for a `picked` prefill, so that they can be captured in CUDA graphs).
    """

    def __init__(self, model: ChatGLM2Model, cache: SlotCache) -> None:
        cfg = model.config
        if cfg.apply_residual_connection_post_layernorm:
            raise ValueError(
                "the fast forward needs apply_residual_connection_post_layernorm=False"
            )
        t = model.transformer
        self.cache = cache
        self.device = model.device
        self.dtype = model.dtype
        # The residual stream: fp32 for fp16/bf16 models (float64 stays float64).
        self.stream_dtype = torch.promote_types(model.dtype, torch.float32)
        self.heads = t.encoder.blocks()[0].self_attention.n_head  # a tensor-parallel rank's own
        self.head_dim = cfg.kv_channels
        self.embed = t.embedding.word_embeddings.weight.detach()  # [V, H]
        # The rotary table [seq_length, D/4, 2] fp32; a split model's layers read it on their
        # own devices (devices.py).
        self.ropes = {device: t.rope.to(device) for device, _ in model.layer_split}
        self.ropes[t.rope.device] = t.rope
        self.final_norm = Norm.of(t.encoder.final_layernorm)
        self.output = LinearWeights.of(t.output_layer, self.dtype)
        self.layers: list[_Layer] = []
        for block in t.encoder.blocks():
            attn, mlp = block.self_attention, block.mlp
            norm1, norm2 = Norm.of(block.input_layernorm), Norm.of(block.post_attention_layernorm)
            assert norm1 is not None and norm2 is not None
            qkv, dense, h_to_4h, h4_to_h = (
                LinearWeights.of(m, self.dtype)
                for m in (attn.query_key_value, attn.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h)
            )
            self.layers.append(_Layer(norm1, qkv, dense, norm2, h_to_4h, h4_to_h))

    def __call__(self, segments: Sequence[Segment]) -> Tensor | None:
        """`prefill(segments)` after checking them, falling back to the torch ops if a kernel
        fails (they rewrite the same cache entries)."""
        if not segments:
            raise ValueError("nothing to prefill")
        for s in segments:
            if s.ids.numel() == 0 or s.start + s.ids.numel() > self.cache.max_seq:
                raise ValueError(f"segment of {s.ids.numel()} tokens at {s.start} does not fit")
        return with_fallback(lambda: self.prefill(segments), self.device, "prefill")

    def prefill(
        self,
        segments: Sequence[Segment],
        picked: Tensor | None = None,
        mlp_rows: int = MLP_ROWS,
        mlp_columns: int | None = None,
    ) -> Tensor | None:
        """Run the segments' tokens as one block; fp32 logits [n, V] of the rows of the block
        in `picked` (on the device), by default the last of each segment that asks for logits
        (None when none does). The MLP runs over mlp_rows rows at a time, and with
        mlp_columns over that many intermediate features at a time (see MLP_COLUMNS)."""
        cache, n = self.cache, self.heads
        ids = torch.cat([s.ids for s in segments])  # [T]
        device = ids.device
        bounds: list[tuple[int, int]] = []
        for s in segments:
            begin = bounds[-1][1] if bounds else 0
            bounds.append((begin, begin + s.ids.numel()))
        pos = torch.cat(
            [torch.arange(s.start, s.start + s.ids.numel(), device=device) for s in segments]
        )  # [T]
        rows = torch.cat(
            [torch.full((s.ids.numel(),), s.row, device=device) for s in segments]
        )  # [T]

        def attend(qkv: Tensor, i: int) -> Tensor:
            y = torch.empty(qkv.shape[0], n * self.head_dim, dtype=qkv.dtype, device=qkv.device)
            k, v = cache.layer(i)
            for s, (a, b) in zip(segments, bounds, strict=True):
                first = cache.prefix + s.start  # cache slot of the segment's first token
                y[a:b] = fused.attention_prefill(qkv[a:b], k[s.row], v[s.row], n, first)
            return y

        x = self._layers(ids, pos, rows, attend, mlp_rows, mlp_columns)  # [T, H]
        if picked is None:
            last = [b - 1 for s, (_, b) in zip(segments, bounds, strict=True) if s.logits]
            if not last:
                _make_current(self.device)
                return None
            picked = torch.tensor(last, device=device)
        return self._logits(x[picked.to(x.device)])

    def prefill_at(
        self, ids: Tensor, start: Tensor, row: int, mlp_columns: int | None = None
    ) -> Tensor:
        """One piece of a prompt, ids [S], at positions start..start+S-1 of cache row `row`,
        `start` a tensor [1] on the device: fp32 logits [1, V] of its last token. Nothing
        depends on the position on the host, so one CUDA graph of it serves every chunk of a
        long prompt (prefill_graphs.ChunkGraphs). Attention goes to our kernel even for the
        first chunk (SDPA would need the position on the host)."""
        seq = ids.numel()
        pos = start + torch.arange(seq, device=ids.device)  # [S]
        rows = torch.full((seq,), row, device=ids.device)  # [S]
        first = start + self.cache.prefix  # [1] cache slot of the first token

        def attend(qkv: Tensor, i: int) -> Tensor:
            k, v = self.cache.layer(i)
            return fused.attention_prefill(qkv, k[row], v[row], self.heads, first)

        x = self._layers(ids, pos, rows, attend, seq, mlp_columns)  # [S, H]
        return self._logits(x[seq - 1 :])

    def decode(self, tokens: Tensor, pos: Tensor, write_rows: Tensor, n_keys: int) -> Tensor:
        """One token for each of B batch rows → fp32 logits [B, V].

        tokens, pos [B]: the token and its position for batch row b, which reads cache row b
        over slots 0..n_keys-1 (those past its own position masked) and writes its key/value
        into cache row write_rows[b] (b itself, or the scratch row for padding)."""
        cache = self.cache

        def attend(qkv: Tensor, i: int) -> Tensor:
            k, v = cache.layer(i)
            here = pos.to(qkv.device)  # a split model's later layers are on other devices
            return fused.attention_decode(qkv, k, v, here, cache.prefix, self.heads, n_keys)

        return self._logits(self._layers(tokens, pos, write_rows, attend, tokens.numel(), None))

    def _layers(
        self,
        ids: Tensor,
        pos: Tensor,
        rows: Tensor,
        attend: Attend,
        mlp_rows: int,
        mlp_columns: int | None,
    ) -> Tensor:
        """The transformer layers over tokens ids [T] at positions pos [T] of cache rows
        rows [T] → the residual stream [T, H] after the last layer."""
        cache = self.cache
        x = F.embedding(ids, self.embed).to(self.stream_dtype)  # [T, H]
        for i, layer in enumerate(self.layers):
            device = layer.qkv.weight.device
            if x.device != device:  # the next layer range of a split model (devices.py)
                x, pos, rows = x.to(device), pos.to(device), rows.to(device)
                _make_current(device)
            qkv = fused.linear(layer.qkv, x, norm=layer.norm1)  # [T, (N + 2G) * D]
            k, v = cache.layer(i)
            fused.rope_cache(qkv, self.ropes[device], pos, rows, k, v, cache.prefix, self.heads)
            y = attend(qkv, i)  # [T, N * D]
            del qkv  # drop activations as soon as they are used: the 8k budget is tight
            fused.linear(layer.dense, y, add_to=x)
            del y
            for r0 in range(0, x.shape[0], mlp_rows):  # the MLP in row blocks: [rows, 2F] is big
                part = x[r0 : r0 + mlp_rows]
                ffn = layer.h4_to_h.in_features
                if mlp_columns is None or mlp_columns >= ffn:
                    act = fused.linear(layer.h_to_4h, part, norm=layer.norm2, glu=True)  # [rows, F]
                    fused.linear(layer.h4_to_h, act, add_to=part)
                    del act
                else:
                    self._mlp_in_columns(layer, part, mlp_columns)
        return x

    def _mlp_in_columns(self, layer: _Layer, part: Tensor, columns: int) -> None:
        """The MLP added into part [rows, H] (the residual stream) over `columns` of its F
        intermediate features at a time: silu(gate) * up is elementwise per feature, and
        4h_to_h's product is the sum of its column blocks' products."""
        ffn = layer.h4_to_h.in_features
        h = fused.rmsnorm(part, layer.norm2, self.dtype)  # [rows, H], normalised once
        for c0 in range(0, ffn, columns):
            c1 = min(c0 + columns, ffn)
            gate = fused.linear(layer.h_to_4h.rows(c0, c1), h)  # [rows, c]
            up = fused.linear(layer.h_to_4h.rows(ffn + c0, ffn + c1), h)
            act = F.silu(gate, inplace=True).mul_(up)  # as F.silu(gate) * up rounds
            del up
            fused.linear(layer.h4_to_h.columns(c0, c1), act, add_to=part)
            del act, gate

    def _logits(self, hidden: Tensor) -> Tensor:
        """hidden [n, H] (the residual stream) → fp32 logits [n, V], on the first device
        (where sampling runs) whichever device a split model's output layer is on."""
        logits = fused.linear(self.output, hidden, norm=self.final_norm, out_dtype=torch.float32)
        _make_current(self.device)
        return logits.to(self.device)


def _make_current(device: torch.device) -> None:
    """Make `device` the current CUDA device if it is not. Triton launches a kernel on the
    current device whatever its tensors' device, so a pass of a model split over GPUs makes
    each range's device current in turn, and the first one again at its end (where the
    caller's work, sampling and its events, goes on)."""
    if device.type == "cuda" and torch.cuda.current_device() != device.index:
        torch.cuda.set_device(device)
