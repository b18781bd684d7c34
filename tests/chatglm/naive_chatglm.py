"""A slow, independent ChatGLM2 forward pass, written from the architecture description only.

One sequence, float64, explicit loops over heads and positions: each query head h reads
key/value group h // (heads / groups); the first half of every head's channels is rotated as
interleaved pairs (x[2i], x[2i+1]) by the angle
    (pos / rope_ratio) * 10000 ** (-2i / (kv_channels / 2)).
P-tuning prefix rows come straight from the prefix encoder's output width, laid out
[layer][key|value][group][channel], and are neither rotated nor masked.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kbqa.chatglm import ChatGLM2Config


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _rotate(vec: Tensor, pos: float) -> Tensor:
    out = vec.clone()
    half = vec.numel() // 2
    for i in range(half // 2):
        angle = pos * 10000.0 ** (-2 * i / half)
        a, b = vec[2 * i], vec[2 * i + 1]
        out[2 * i] = a * math.cos(angle) - b * math.sin(angle)
        out[2 * i + 1] = b * math.cos(angle) + a * math.sin(angle)
    return out


def _prefix_rows(state: dict[str, Tensor], cfg: ChatGLM2Config) -> Tensor:
    rows = state["transformer.prefix_encoder.embedding.weight"].double()
    if cfg.prefix_projection:
        w0, b0 = (
            state["transformer.prefix_encoder.trans.0.weight"],
            state["transformer.prefix_encoder.trans.0.bias"],
        )
        w2, b2 = (
            state["transformer.prefix_encoder.trans.2.weight"],
            state["transformer.prefix_encoder.trans.2.bias"],
        )
        rows = torch.tanh(rows @ w0.double().T + b0.double()) @ w2.double().T + b2.double()
    return rows  # [P, L * 2 * G * D]


def naive_hidden(state: dict[str, Tensor], cfg: ChatGLM2Config, ids: list[int]) -> Tensor:
    """Hidden states after final_layernorm, [len(ids), hidden_size], float64."""
    w = {k: v.double() for k, v in state.items()}
    n, g, d, f = (
        cfg.num_attention_heads,
        cfg.multi_query_group_num,
        cfg.kv_channels,
        cfg.ffn_hidden_size,
    )
    eps, ratio = cfg.layernorm_epsilon, cfg.rope_ratio
    seq = len(ids)
    prefix = _prefix_rows(state, cfg) if cfg.pre_seq_len else None
    x = w["transformer.embedding.word_embeddings.weight"][ids]
    for layer in range(cfg.num_layers):
        p = f"transformer.encoder.layers.{layer}."
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        qkv = h @ w[p + "self_attention.query_key_value.weight"].T
        qkv = qkv + w[p + "self_attention.query_key_value.bias"]
        q_all = qkv[:, : n * d]
        k_all = qkv[:, n * d : n * d + g * d]
        v_all = qkv[:, n * d + g * d :]
        out = torch.zeros(seq, n * d, dtype=torch.float64)
        for head in range(n):
            group = head // (n // g)
            keys = [_rotate(k_all[t, group * d : (group + 1) * d], t / ratio) for t in range(seq)]
            values = [v_all[t, group * d : (group + 1) * d] for t in range(seq)]
            extra_k: list[Tensor] = []
            extra_v: list[Tensor] = []
            if prefix is not None:
                width = g * d
                k_rows = prefix[:, (2 * layer) * width : (2 * layer + 1) * width]
                v_rows = prefix[:, (2 * layer + 1) * width : (2 * layer + 2) * width]
                extra_k = [row[group * d : (group + 1) * d] for row in k_rows]
                extra_v = [row[group * d : (group + 1) * d] for row in v_rows]
            for s in range(seq):
                query = _rotate(q_all[s, head * d : (head + 1) * d], s / ratio)
                ks = extra_k + keys[: s + 1]
                vs = extra_v + values[: s + 1]
                scores = torch.stack([query @ key for key in ks]) / math.sqrt(d)
                weights = torch.softmax(scores, dim=0)
                out[s, head * d : (head + 1) * d] = sum(
                    wt * val for wt, val in zip(weights, vs, strict=True)
                )
        x = x + out @ w[p + "self_attention.dense.weight"].T
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        a = h @ w[p + "mlp.dense_h_to_4h.weight"].T
        gate, up = a[:, :f], a[:, f:]
        x = x + (gate * torch.sigmoid(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    return _rms(x, w["transformer.encoder.final_layernorm.weight"], eps)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter uniform(-0.5, 0.5), norms included, so no weight hides a layout bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.rand(param.shape, generator=gen) - 0.5)
