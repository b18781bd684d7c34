"""Single-stream generation through the fast forward (forward.py, fused.py) with one row
against the eager model.

On the CPU the fused ops run their torch references; test_kernels.py runs the same checks
(fast_checks.py) through the Triton kernels under Triton's interpreter. On CUDA,
bench/chatglm_engine_gpu.py checks the compiled kernels and the CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fast_checks import CONFIG, gemv_error, steps_error

from kbqa.chatglm import ChatGLM2
from kbqa.chatglm.forward import Forward, SlotCache
from kbqa.chatglm.generate import EagerSteps, EngineSteps, steps_for


@pytest.mark.parametrize("quantize", [None, "int4", "int8"])
def test_fast_steps_equal_the_eager_model(quantize: str | None) -> None:
    assert steps_error(quantize) < 1e-5


@pytest.mark.parametrize("quantize", [None, "int4", "int8"])
def test_fast_steps_with_the_mlp_in_column_blocks_equal_the_eager_model(
    quantize: str | None,
) -> None:
    # 80 tokens in chunks of 79 and 1; the MLP over 40, 40 and 16 of its 96 features.
    assert steps_error(quantize, chunk=79, mlp_columns=40) < 1e-5


def test_fast_steps_see_the_ptuning_prefix_in_the_cache() -> None:
    assert steps_error(None, pre_seq_len=3, chunk=40) < 1e-5


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("variant", ["none", "norm", "glu"])
def test_fused_gemv_reference_matches_float64(bits: int, variant: str) -> None:
    assert gemv_error(bits, variant) < 1e-5


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_generate_fast_gives_the_eager_tokens(quantize: str | None) -> None:
    torch.manual_seed(3)
    model = ChatGLM2.from_config(CONFIG, quantize=quantize)
    ids = torch.randint(0, CONFIG["padded_vocab_size"], (30,)).tolist()
    options = {"max_new_tokens": 12, "temperature": 0.0, "eos_token_ids": []}
    eager = list(model.generate(ids, fast=False, **options))
    assert list(model.generate(ids, fast=True, **options)) == eager
    sampled = {"max_new_tokens": 12, "temperature": 0.9, "top_p": 0.8, "seed": 5}
    assert list(model.generate(ids, fast=True, **sampled)) == list(
        model.generate(ids, fast=False, **sampled)
    )


def test_steps_choice_and_reuse() -> None:
    model = ChatGLM2.from_config(CONFIG)
    assert isinstance(steps_for(model, 64), EagerSteps)  # CPU: eager unless asked
    first = steps_for(model, 64, fast=True)
    assert isinstance(first, EngineSteps) and first.cache.max_seq == 256  # rounded up
    assert steps_for(model, 200, fast=True) is first  # same weights, the cache is long enough
    assert steps_for(model, 300, fast=True) is not first  # a longer cache: new steps (graphs)
    with pytest.raises(ValueError, match="residual"):
        other = ChatGLM2.from_config({**CONFIG, "apply_residual_connection_post_layernorm": True})
        Forward(other, SlotCache(other, 1, 16))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_matmuls_in_blocks_and_whole_match_the_dequantized_weight(
    monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    """Many rows dequantize the weight in blocks (up to WHOLE_DEQUANT_ROWS rows) or whole."""
    from kbqa.chatglm import fused
    from kbqa.chatglm.quantize import quantize_weight

    g = torch.Generator().manual_seed(bits)
    weight, bias = torch.randn(300, 64, generator=g), torch.randn(300, generator=g)
    q, scale = quantize_weight(weight, bits)
    words = q.view(torch.int32) if bits == 4 else q
    lw = fused.LinearWeights(words, scale, bias, bits, 64, 300, torch.float32)
    x = torch.randn(40, 64, generator=g)
    expected = F.linear(x, lw.dequantized(slice(None), x.dtype), bias)
    monkeypatch.setattr(fused, "DEQUANT_BLOCK", 64 * 130)  # blocks of 128 output features
    torch.testing.assert_close(fused.linear(lw, x), expected)
    monkeypatch.setattr(fused, "WHOLE_DEQUANT_ROWS", 39)
    torch.testing.assert_close(fused.linear(lw, x), expected)
