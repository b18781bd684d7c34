"""ChatGLM2-6B in plain PyTorch.

Module names follow the Hugging Face checkpoint keys (`transformer.encoder.layers.N.…`), so a
state dict maps onto this model without renaming. Tensors are batch-first here ([B, S, …]);
the original implementation is sequence-first, which changes no numbers.

Decoding uses a preallocated KV cache (`setup_caches`) so every decode step has the same
shapes: positions arrive as a tensor (`input_pos`) and the attention mask is computed from
them, with no Python branching on data.
"""

from __future__ import annotations

import os
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kbqa.chatglm.config import ChatGLM2Config

# cuBLAS keeps a workspace per stream (~33 MB by default, counted in the allocator's peak); two
# 4 MiB buffers cost nothing measurable in speed here and bring fp16 8k generation under 12.8 GB
# (bench/RESULTS.md). It must be set before the first cuBLAS call, so it is set on import.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:2")

ROPE_BASE = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalised in fp32 whatever the model dtype, as the original does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


def rope_table(
    seq_length: int, kv_channels: int, rope_ratio: float = 1.0, device: Any = None
) -> Tensor:
    """cos/sin for every position, fp32: [seq_length, kv_channels // 4, 2].

    Only the first half of each head's channels is rotated, as kv_channels // 4 pairs.
    rope_ratio interpolates positions (position / rope_ratio), as chatglm2-6b-32k does; the
    base stays 10000 (ChatGLM3 instead multiplies the base, a different model family).
    """
    rot_dim = kv_channels // 2
    exponent = torch.arange(0, rot_dim, 2, dtype=torch.float32, device=device) / rot_dim
    inv_freq = 1.0 / (ROPE_BASE**exponent)  # [rot_dim / 2]
    positions = torch.arange(seq_length, dtype=torch.float32, device=device) / rope_ratio
    angles = torch.outer(positions, inv_freq)  # [T, rot_dim / 2]
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # [T, rot_dim / 2, 2]


def apply_rotary(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of the first half of each head, in fp32.

    x: [B, S, N, D]; rope: [S, D // 4, 2] (cos, sin). Returns [B, S, N, D] in x's dtype.
    """
    batch, seq, heads, _ = x.shape
    pairs = rope.shape[-2]
    x_rot, x_pass = x[..., : 2 * pairs], x[..., 2 * pairs :]
    xp = x_rot.float().reshape(batch, seq, heads, pairs, 2)  # [B, S, N, D/4, 2]
    r = rope.view(1, seq, 1, pairs, 2)  # [1, S, 1, D/4, 2]
    cos, sin = r[..., 0], r[..., 1]
    even, odd = xp[..., 0], xp[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    rotated = rotated.flatten(3)  # [B, S, N, D/2]
    return torch.cat([rotated.to(x.dtype), x_pass], dim=-1)  # [B, S, N, D]


class PrefixEncoder(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        if not config.pre_seq_len:
            raise ValueError("PrefixEncoder needs config.pre_seq_len")
        # [P, L, G, D]: prefix positions, layers, key/value groups, kv_channels
        self.shape = (config.pre_seq_len, config.num_layers, config.kv_groups, config.kv_channels)
        width = config.num_layers * 2 * config.kv_groups * config.kv_channels
        self.embedding = nn.Embedding(config.pre_seq_len, width)
        # Key names trans.0 / trans.2 come from the official nn.Sequential(Linear, Tanh, Linear).
        self.trans: nn.Sequential | None = None
        if config.prefix_projection:
            self.trans = nn.Sequential(
                nn.Linear(width, config.hidden_size),
                nn.Tanh(),
                nn.Linear(config.hidden_size, width),
            )

    def forward(self) -> Tensor:
        """Prefix keys/values for every layer: [num_layers, 2, groups, P, kv_channels]."""
        rows = self.embedding.weight  # [P, L * 2 * G * D]: index i for prefix position i
        if self.trans is not None:
            rows = self.trans(rows)
        p, n, g, d = self.shape
        kv = rows.view(p, n * 2, g, d).permute(1, 2, 0, 3)  # [L * 2, G, P, D]
        return kv.reshape(n, 2, g, p, d)  # [L, 2 (key, value), G, P, D]


class KVCache(nn.Module):
    """Keys/values for every cache slot: shape [max_batch, groups, slots, D] each.

    With P-tuning the first pre_seq_len slots hold the prefix; position p lives in slot
    pre_seq_len + p.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        self.k_cache: Tensor
        self.v_cache: Tensor
        keys = torch.zeros(shape, dtype=dtype, device=device)
        self.register_buffer("k_cache", keys, persistent=False)
        self.register_buffer("v_cache", torch.zeros_like(keys), persistent=False)

    def update(self, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, G, S, D] at slots [S]; return the whole cache [B, G, slots, D]."""
        batch = k.shape[0]
        self.k_cache[:batch, :, slots] = k
        self.v_cache[:batch, :, slots] = v
        return self.k_cache[:batch], self.v_cache[:batch]


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.n_head = config.num_attention_heads
        self.n_group = config.kv_groups
        self.head_dim = config.kv_channels
        self.query_key_value = nn.Linear(
            config.hidden_size, config.qkv_size, bias=config.add_qkv_bias
        )
        self.dense = nn.Linear(
            self.n_head * self.head_dim, config.hidden_size, bias=config.add_bias_linear
        )
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: Tensor,
        rope: Tensor,
        mask: Tensor,
        cache_slots: Tensor | None,
        prefix: Tensor | None,
    ) -> Tensor:
        """x: [B, S, hidden]; rope: [S, D/4, 2]; mask: [S, T] bool (True = may attend).

        cache_slots [S] writes into and attends over the KV cache (T = cache slots);
        None attends over prefix [2, G, P, D] (if any) plus this call's keys (T = P + S).
        """
        batch, seq, _ = x.shape
        n, g, d = self.n_head, self.n_group, self.head_dim
        qkv = self.query_key_value(x)  # [B, S, (N + 2G) * D]
        q, k, v = qkv.split([n * d, g * d, g * d], dim=-1)
        q = apply_rotary(q.view(batch, seq, n, d), rope)  # [B, S, N, D]
        k = apply_rotary(k.view(batch, seq, g, d), rope)  # [B, S, G, D]
        v = v.view(batch, seq, g, d)  # [B, S, G, D]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, N|G, S, D]

        if cache_slots is not None:
            assert self.kv_cache is not None, "call setup_caches() before a cached forward"
            k, v = self.kv_cache.update(cache_slots, k, v)  # [B, G, T, D]
        elif prefix is not None:
            # Prefix keys/values carry no rotary and come before the prompt's.
            pk = prefix[0].unsqueeze(0).expand(batch, -1, -1, -1).to(k.dtype)  # [B, G, P, D]
            pv = prefix[1].unsqueeze(0).expand(batch, -1, -1, -1).to(v.dtype)  # [B, G, P, D]
            k = torch.cat([pk, k], dim=2)  # [B, G, P + S, D]
            v = torch.cat([pv, v], dim=2)  # [B, G, P + S, D]

        # Query head h reads key/value group h // (N / G): repeat each group N/G times.
        k = k.repeat_interleave(n // g, dim=1)  # [B, N, T, D]
        v = v.repeat_interleave(n // g, dim=1)  # [B, N, T, D]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, N, S, D]
        y = y.transpose(1, 2).reshape(batch, seq, n * d)  # [B, S, N * D]
        return self.dense(y)


class MLP(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        bias = config.add_bias_linear
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=bias)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)  # [B, S, F] each; gate first
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        eps = config.layernorm_epsilon
        self.residual_after_norm = config.apply_residual_connection_post_layernorm
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.self_attention = SelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        rope: Tensor,
        mask: Tensor,
        cache_slots: Tensor | None,
        prefix: Tensor | None,
    ) -> Tensor:
        h = self.input_layernorm(x)
        attn = self.self_attention(h, rope, mask, cache_slots, prefix)
        x = (h if self.residual_after_norm else x) + attn
        h = self.post_attention_layernorm(x)
        return (h if self.residual_after_norm else x) + self.mlp(h)


class Embedding(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)  # [B, S, hidden]


class Encoder(nn.Module):
    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config) for _ in range(config.num_layers))
        self.final_layernorm: nn.Module = (
            RMSNorm(config.hidden_size, config.layernorm_epsilon)
            if config.post_layer_norm
            else nn.Identity()
        )

    def blocks(self) -> list[GLMBlock]:
        return [cast(GLMBlock, layer) for layer in self.layers]


class ChatGLMTransformer(nn.Module):
    """`transformer.*` in the checkpoint. forward() returns the final-normed hidden states;
    ChatGLM2 applies output_layer itself so that it can keep only the last position first."""

    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.config = config
        self.embedding = Embedding(config)
        self.encoder = Encoder(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.prefix_encoder = PrefixEncoder(config) if config.pre_seq_len else None
        self.rope: Tensor
        self.register_buffer("rope", None, persistent=False)
        self.reset_rope(None)

    def reset_rope(self, device: Any) -> None:
        """(Re)compute the (non-persistent) rotary table, e.g. after building on the meta device."""
        cfg = self.config
        self.rope = rope_table(cfg.seq_length, cfg.kv_channels, cfg.rope_ratio, device)

    @property
    def prefix_len(self) -> int:
        if self.prefix_encoder is None or self.config.pre_seq_len is None:
            return 0
        return self.config.pre_seq_len

    def forward(self, input_ids: Tensor, input_pos: Tensor | None = None) -> Tensor:
        """input_ids [B, S] → hidden [B, S, hidden].

        input_pos [S]: positions of these tokens, written into and attended over the KV cache.
        None: a full forward of positions 0..S-1 without touching the cache.
        """
        seq = input_ids.shape[1]
        p = self.prefix_len
        device = input_ids.device
        prefix: Tensor | None = None
        if input_pos is None:
            positions = torch.arange(seq, device=device)  # [S]
            key_positions = torch.arange(-p, seq, device=device)  # [P + S]
            cache_slots = None
            if self.prefix_encoder is not None:
                prefix = self.prefix_encoder()  # [L, 2, G, P, D]
        else:
            cache = self.encoder.blocks()[0].self_attention.kv_cache
            assert cache is not None, "call setup_caches() before a cached forward"
            positions = input_pos  # [S]
            # Slot j holds position j - P; the prefix sits at negative positions.
            key_positions = torch.arange(-p, cache.k_cache.shape[2] - p, device=device)  # [T]
            cache_slots = input_pos + p  # [S]; the prefix is already in the cache
        # Causal over positions; prefix keys (negative) are always visible; empty cache slots
        # hold positions beyond the query's and are masked.
        mask = key_positions.unsqueeze(0) <= positions.unsqueeze(1)  # [S, T]
        rope = self.rope[positions]  # [S, D/4, 2]

        x = self.embedding(input_ids)  # [B, S, hidden]
        for i, layer in enumerate(self.encoder.blocks()):
            device = layer.input_layernorm.weight.device
            if x.device != device:  # the next layer range of a split model (devices.py)
                x, rope, mask = x.to(device), rope.to(device), mask.to(device)
                cache_slots = cache_slots.to(device) if cache_slots is not None else None
            layer_prefix = prefix[i].to(device) if prefix is not None else None  # [2, G, P, D]
            x = layer(x, rope, mask, cache_slots, layer_prefix)
        return self.encoder.final_layernorm(x)


class ChatGLM2Model(nn.Module):
    """The network with its KV cache; chatglm2.py's ChatGLM2 adds loading and generate()."""

    def __init__(self, config: ChatGLM2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = ChatGLMTransformer(config)
        self.max_batch_size = 0
        self.max_seq_length = 0
        self.cache_owner: object | None = None  # the generation currently using the cache
        # A model split over devices (devices.py): (device, layer range) per range; () = one.
        self.layer_split: tuple[tuple[torch.device, range], ...] = ()

    @property
    def device(self) -> torch.device:
        return self.transformer.embedding.word_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.embedding.word_embeddings.weight.dtype

    def setup_caches(self, max_batch_size: int, max_seq_length: int) -> None:
        """Preallocate the KV cache for max_seq_length positions (plus any P-tuning prefix)."""
        if max_seq_length > self.config.seq_length:
            raise ValueError(
                f"max_seq_length {max_seq_length} exceeds the model's seq_length "
                f"{self.config.seq_length}"
            )
        cfg = self.config
        p = self.transformer.prefix_len
        slots = p + max_seq_length
        for layer in self.transformer.encoder.blocks():
            attn = layer.self_attention
            device = layer.input_layernorm.weight.device  # a split model's cache is its layer's
            # attn.n_group: a tensor-parallel rank holds only its KV groups (tensor_parallel.py).
            shape = (max_batch_size, attn.n_group, slots, cfg.kv_channels)
            attn.kv_cache = KVCache(shape, self.dtype, device)
        self.max_batch_size = max_batch_size
        self.max_seq_length = max_seq_length
        self.refresh_prefix()

    def refresh_prefix(self) -> None:
        """Write the P-tuning prefix keys/values into cache slots 0..P-1 (no-op without one)."""
        encoder = self.transformer.prefix_encoder
        if encoder is None or self.max_seq_length == 0:
            return
        p = self.transformer.prefix_len
        with torch.no_grad():
            prefix = encoder()  # [L, 2, G, P, D]
            for i, layer in enumerate(self.transformer.encoder.blocks()):
                cache = layer.self_attention.kv_cache
                assert cache is not None
                device = cache.k_cache.device
                cache.k_cache[:, :, :p] = prefix[i, 0].to(device, self.dtype)  # over [B, G, P, D]
                cache.v_cache[:, :, :p] = prefix[i, 1].to(device, self.dtype)

    def forward(
        self, input_ids: Tensor, input_pos: Tensor | None = None, last_logits_only: bool = False
    ) -> Tensor:
        """input_ids [B, S] → logits [B, S, vocab] ([B, 1, vocab] with last_logits_only)."""
        hidden = self.transformer(input_ids, input_pos)  # [B, S, hidden]
        if last_logits_only:
            hidden = hidden[:, -1:]  # [B, 1, hidden]
        # A split model's output layer is on its last device; the logits go back to the
        # input's, where sampling runs (a no-op on one device).
        return self.transformer.output_layer(hidden).to(input_ids.device)
