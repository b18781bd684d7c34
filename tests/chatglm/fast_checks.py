"""Checks of the fast forward (kbqa/chatglm/forward.py) against the eager model, shared by
test_fast.py (torch reference ops) and test_kernels.py (the Triton kernels themselves, on the
CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kbqa.chatglm import ChatGLM2, fused
from kbqa.chatglm.config import PRESETS
from kbqa.chatglm.forward import Segment
from kbqa.chatglm.fused import LinearWeights, Norm
from kbqa.chatglm.generate import EagerSteps, EngineSteps

# Small enough for the Triton interpreter; ffn 96 and vocab 300 leave partial GEMV blocks,
# and 80 prompt tokens over a 256-slot cache give two attention pieces of 64 keys, the second
# partly filled.
CONFIG = {**PRESETS["tiny"], "ffn_hidden_size": 96, "padded_vocab_size": 300}
PROMPT, STEPS, SLOTS = 80, 3, 256


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def steps_error(
    quantize: str | None,
    pre_seq_len: int | None = None,
    chunk: int = 64,
    mlp_columns: int | None = None,
) -> float:
    """Largest relative logits error of the engine with one row (generate's EngineSteps)
    against the eager model over a prefill in chunks of `chunk` (the MLP in blocks of half
    that, and of mlp_columns intermediate features) and STEPS decode steps (float32, tiny
    config)."""
    torch.manual_seed(0)
    config = {**CONFIG, "pre_seq_len": pre_seq_len}
    model = ChatGLM2.from_config(config, quantize=quantize)
    if model.transformer.prefix_encoder is not None:
        torch.nn.init.normal_(model.transformer.prefix_encoder.embedding.weight)
    ids = torch.randint(0, CONFIG["padded_vocab_size"], (PROMPT + STEPS,))

    model.setup_caches(1, SLOTS)
    eager = EagerSteps(model)
    expected = [eager.prefill(ids[:PROMPT])]
    expected += [eager.decode(ids[p], p) for p in range(PROMPT, PROMPT + STEPS)]

    steps = EngineSteps(model, SLOTS)
    got = None
    for c0 in range(0, PROMPT, chunk):
        piece = Segment(ids[c0 : min(c0 + chunk, PROMPT)], c0, 0, logits=True)
        got = steps.forward.prefill([piece], mlp_rows=chunk // 2, mlp_columns=mlp_columns)
    assert got is not None
    found = [got[0]] + [steps.decode(ids[p], p).clone() for p in range(PROMPT, PROMPT + STEPS)]
    return max(rel(g, e) for g, e in zip(found, expected, strict=True))


def gemv_error(bits: int, variant: str, n: int = 37, k: int = 200) -> float:
    """fused.linear at one row (the GEMV where the kernels run) with random weights and inputs
    against a float64 computation. variant: "none" (added into a residual), "norm" (RMSNorm
    before) or "glu" (RMSNorm before, SwiGLU of the row halves after)."""
    torch.manual_seed(bits + len(variant))
    rows = 2 * n if variant == "glu" else n
    x = torch.randn(k)
    w = torch.randn(rows, k) / k**0.5
    bias, res = torch.randn(rows), torch.randn(n)
    norm = Norm(torch.rand(k) + 0.5, 1e-5) if variant != "none" else None
    xd = x.double()
    if norm is not None:
        xd = xd * torch.rsqrt(xd.pow(2).mean() + norm.eps) * norm.weight.double()
    if bits == 16:
        lw = LinearWeights(w, None, bias, 16, k, rows, torch.float32)
        wd = w.double()
    else:
        from kbqa.chatglm.quantize import quantize_weight

        q, scale = quantize_weight(w, bits)
        words = q.view(torch.int32) if bits == 4 else q
        lw = LinearWeights(words, scale, bias, bits, k, rows, torch.float32)
        wd = lw.dequantized(slice(None), torch.float64)
    expected = wd @ xd + bias.double()
    if variant == "glu":
        expected = torch.nn.functional.silu(expected[:n]) * expected[n:]
    if variant == "none":  # accumulate into the residual, as decode does
        expected += res.double()
        got = fused.linear(lw, x.view(1, -1), add_to=res.clone().view(1, -1))
    else:
        got = fused.linear(lw, x.view(1, -1), norm=norm, glu=variant == "glu")
    return rel(got, expected)
